"""What both tools report in one line: the two kinds of user mistake (exit code 2), and a run that
stopped to be continued (exit code 75)."""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration that cannot be validated: names the offending key and what was expected."""


class UsageError(Exception):
    """A command line that argparse (or the override pre-parsing) rejected, for the parser ``prog``."""

    def __init__(self, prog: str, message: str) -> None:
        super().__init__(f"{prog}: error: {message} (see `{prog} --help`)")


class RunStopped(Exception):
    """A run that stopped on purpose after saving its state (a preemption signal): rerunning the same
    command continues it. Both tools print its message as one line and exit with :attr:`exit_code`."""

    exit_code = 75  # EX_TEMPFAIL: try again later (SLURM scripts requeue on it)
