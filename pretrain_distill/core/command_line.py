"""One command style for both console scripts: subcommands whose modules load only when chosen, config
arguments with overrides, and one way of failing.

Each subcommand lives in its own module under a ``commands/`` folder, exposing ``add_arguments(parser)``
and ``run(args) -> int``; the module docstring is the subcommand's ``--help`` description.
``prog --help`` imports nothing heavy.

A subcommand with a config declares it with :func:`add_config_arguments`: YAML files (positional or
``--config FILE``) and overrides in any position (:mod:`pretrain_distill.core.overrides`), plus options
declared with :func:`add_config_option`, each a shorthand for one config key (``--task sst2`` =
``task=sst2``), applied last. :func:`config_from_args` builds the validated config. The ``--local_rank=N`` the
deepspeed launcher adds to every worker's arguments is dropped anywhere (the rank comes from the
``LOCAL_RANK`` it also sets), so both tools run under ``deepspeed``, ``torchrun`` and ``srun`` alike.

Exit codes: 0 done; 2 a user mistake (unknown command or option, bad override or config value, missing
input file), reported as one line on stderr with a "did you mean" suggestion where one is close; 1 any
other failure, also one line (``--debug`` or ``DISTILL_DEBUG=1`` prints the traceback as well);
130 interrupted; 75 a run stopped by a preemption signal after saving its state (:class:`RunStopped`:
rerunning the same command continues it).
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from pretrain_distill import __version__
from pretrain_distill.core.config_loading import load_config
from pretrain_distill.core.errors import RunStopped, UsageError
from pretrain_distill.core.overrides import command_line_overrides, split_command_line

T = TypeVar("T")

#: Exceptions that mean "the user asked for something that cannot be done" (exit 2): bad values
#: (ConfigError and DataError are ValueErrors), missing inputs, bad command lines.
USER_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,
    FileNotFoundError,
    NotADirectoryError,
    IsADirectoryError,
    FileExistsError,
)
EXIT_USAGE = 2
EXIT_FAILURE = 1
DEBUG_ENV = "DISTILL_DEBUG"


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser that raises :class:`UsageError` instead of printing usage and exiting."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(self.prog, message)


def did_you_mean(word: str, choices: Sequence[str]) -> str:
    """`` (did you mean X?)`` for the closest of ``choices``, or an empty string."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def one_line(err: BaseException) -> str:
    """The exception's message on one line (multi-line messages joined)."""
    text = str(err.code if isinstance(err, SystemExit) else err)
    return " ".join(line.strip() for line in text.splitlines() if line.strip()) or type(err).__name__


def build_parser(
    prog: str, description: str, commands: dict[str, tuple[str, str]], chosen: str | None, version: str
) -> tuple[argparse.ArgumentParser, argparse.ArgumentParser | None]:
    """The top-level parser and, when ``chosen`` names a command, that command's parser."""
    parser = _Parser(
        prog=prog,
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"{prog} {version}")
    parser.add_argument(
        "--debug", action="store_true", help=f"print the traceback of a failure (or set {DEBUG_ENV}=1)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    command_parser = None
    for name, (module_name, summary) in commands.items():
        if name == chosen:
            module = importlib.import_module(module_name)
            command_parser = sub.add_parser(
                name,
                help=summary,
                description=module.__doc__,
                formatter_class=argparse.RawDescriptionHelpFormatter,
                allow_abbrev=False,
            )
            module.add_arguments(command_parser)
            command_parser.set_defaults(_run=module.run)
        else:
            sub.add_parser(name, help=summary)
    return parser, command_parser


def _unknown_arguments(parser: argparse.ArgumentParser, extra: list[str]) -> UsageError:
    first = extra[0]
    options = [o for o in parser._option_string_actions if o.startswith("--")]
    hint = did_you_mean(first.split("=", 1)[0], options) if first.startswith("-") else ""
    return UsageError(parser.prog, f"unrecognized arguments: {' '.join(extra)}{hint}")


def _options(tokens: list[str]) -> list[str]:
    """The ``--option`` tokens of a command line (up to a ``--`` that ends the options)."""
    ends = tokens.index("--") if "--" in tokens else len(tokens)
    return [t for t in tokens[:ends] if t.startswith("--") and len(t) > 2]


def without_local_rank(argv: list[str]) -> list[str]:
    """Drop ``--local_rank=N`` / ``--local_rank N`` (and the ``--local-rank`` spelling) from ``argv``."""
    out, skip = [], False
    for item in argv:
        if skip:
            skip = False
        elif item.startswith(("--local_rank", "--local-rank")):
            skip = "=" not in item
        else:
            out.append(item)
    return out


def parse(
    prog: str,
    description: str,
    commands: dict[str, tuple[str, str]],
    argv: list[str],
    version: str = __version__,
) -> tuple[argparse.ArgumentParser, argparse.Namespace | None]:
    """Parse ``argv``; the Namespace is None when no command was given (help is due)."""
    index = next((i for i, a in enumerate(argv) if not a.startswith("-")), None)
    chosen = argv[index] if index is not None else None
    if chosen is not None and chosen not in commands:
        raise UsageError(prog, f"unknown command {chosen!r}{did_you_mean(chosen, list(commands))}")
    parser, command_parser = build_parser(prog, description, commands, chosen, version)
    if command_parser is None:
        parser.parse_args(argv)  # --help / --version exit here; anything else is an error
        return parser, None
    # Tokens before the command that the tool does not know belong to the command (the deepspeed
    # launcher puts --local_rank=N there).
    own = parser._option_string_actions
    before = [a for a in argv[:index] if a.split("=", 1)[0] in own]
    tokens = [a for a in argv[:index] if a.split("=", 1)[0] not in own] + argv[index + 1 :]
    overrides: list[str] = []
    if command_parser.get_default("overrides") is not None:
        tokens, overrides = split_command_line(command_parser, tokens)
    unknown = [t for t in _options(tokens) if t.split("=", 1)[0] not in command_parser._option_string_actions]
    if unknown:  # before argparse, whose "arguments are required" would hide the misspelt option
        raise _unknown_arguments(command_parser, unknown)
    args, extra = parser.parse_known_args([*before, chosen, *tokens])
    if extra:
        raise _unknown_arguments(command_parser, extra)
    if hasattr(args, "overrides"):
        args.overrides = list(args.overrides or []) + overrides
    return parser, args


def run_cli(
    prog: str,
    description: str,
    commands: dict[str, tuple[str, str]],
    argv: Sequence[str] | None = None,
) -> int:
    """Parse ``argv`` and run the chosen subcommand; returns its exit code (see the module docstring)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    argv = without_local_rank([a for a in argv if a != "--debug"])  # both accepted anywhere
    try:
        parser, args = parse(prog, description, commands, argv)
    except UsageError as err:
        print(one_line(err), file=sys.stderr)
        return EXIT_USAGE
    if args is None:
        parser.print_help()
        return EXIT_USAGE
    where = f"{prog} {args.command}"
    return _run_guarded(args._run, args, where, debug)


def run_script(main: Callable[[], object], prog: str) -> int:
    """Run a script's ``main()`` (the benchmarks) with the commands' way of failing: one line on stderr,
    exit 2 for a mistake (a ``ValueError`` such as ``--device cuda`` without a GPU), 1 otherwise."""
    debug = os.environ.get(DEBUG_ENV, "") not in ("", "0")
    return _run_guarded(lambda _: main(), argparse.Namespace(), prog, debug)


def _run_guarded(
    run: Callable[[argparse.Namespace], int], args: argparse.Namespace, where: str, debug: bool
) -> int:
    """Run a command; a failure becomes one line on stderr and an exit code (module docstring)."""
    try:
        return int(run(args) or 0)
    except KeyboardInterrupt:
        print(f"{where}: interrupted", file=sys.stderr)
        return 130
    except RunStopped as stop:  # saved and stopped on purpose (preempted): rerun to continue
        print(f"{where}: {one_line(stop)}", file=sys.stderr)
        return stop.exit_code
    except SystemExit as stop:  # raise SystemExit("message") = a user mistake a command spotted
        if stop.code is None or isinstance(stop.code, int):
            raise
        failure, code, message = stop, EXIT_USAGE, one_line(stop).removeprefix(f"{where}: ")
    except USER_ERRORS as err:
        failure, code, message = err, EXIT_USAGE, one_line(err)
    except Exception as err:
        failure, code, message = err, EXIT_FAILURE, f"{type(err).__name__}: {one_line(err)}"
    if debug:
        traceback.print_exception(failure)
    hint = "" if debug or code == EXIT_USAGE else f" (--debug or {DEBUG_ENV}=1 for the traceback)"
    print(f"{where}: error: {message}{hint}", file=sys.stderr)
    return code


# --------------------------------------------------------------------------------------------------
# Config arguments


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``<config.yaml ...> [key=value | --key value ...]`` arguments of a command with a config."""
    parser.add_argument(
        "config",
        nargs="*",
        help="YAML config files (composed in order, each with its `defaults:`; `--config FILE` is the "
        "same) and overrides `section.key=value` or `--section.key value`, in any order and position.",
    )
    parser.set_defaults(overrides=[], config_options={})


def add_config_option(parser: argparse.ArgumentParser, *flags: str, key: str, **kwargs: Any) -> None:
    """An option that is a shorthand for the override ``key=<its value>`` (applied after the YAML files
    and the other overrides); ``kwargs`` are ``add_argument``'s (type, nargs, choices, help, ...)."""
    action = parser.add_argument(*flags, **kwargs)
    options = dict(parser.get_default("config_options") or {})
    options[action.dest] = key
    parser.set_defaults(config_options=options)


def config_from_args(cls: type[T], args: argparse.Namespace) -> T:
    """The validated config of a command: its YAML files, then its overrides (:mod:`.overrides`)."""
    return load_config(cls, list(args.config), command_line_overrides(args))
