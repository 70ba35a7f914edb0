"""The ``pretrain-distill`` subcommands, one module each (``add_arguments(parser)``, ``run(args)``; the
module docstring is the subcommand's ``--help``). Commands sit on top of both libraries: they are the only
modules that may import the distillation and the fine-tuning stage together (the demo does)."""
