"""One small mechanism for both console scripts: subcommands whose modules load only when chosen.

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and ``run(args) -> int``;
the module docstring is the subcommand's ``--help`` description. ``prog --help`` imports nothing heavy.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence


def build_parser(prog: str, description: str, commands: dict[str, tuple[str, str]], chosen: str | None):
    parser = argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, summary) in commands.items():
        if name == chosen:
            module = importlib.import_module(module_name)
            p = sub.add_parser(
                name,
                help=summary,
                description=module.__doc__,
                formatter_class=argparse.RawDescriptionHelpFormatter,
            )
            module.add_arguments(p)
            p.set_defaults(_run=module.run)
        else:
            sub.add_parser(name, help=summary)
    return parser


def run_cli(
    prog: str, description: str, commands: dict[str, tuple[str, str]], argv: Sequence[str] | None = None
) -> int:
    """Parse ``argv`` and run the chosen subcommand; returns its exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    chosen = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(prog, description, commands, chosen if chosen in commands else None)
    if not argv:
        parser.print_help()
        return 2
    args, extra = parser.parse_known_args(argv)
    if getattr(args, "_run", None) is None:
        parser.print_help()
        return 2
    if extra:
        if not hasattr(args, "overrides"):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = list(args.overrides or []) + extra
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
