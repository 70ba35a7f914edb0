"""The ``finetune`` subcommands, one module each (``add_arguments(parser)``, ``run(args)``; the module
docstring is the subcommand's ``--help``)."""
