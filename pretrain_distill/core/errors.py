"""The two kinds of user mistake both tools report in one line with exit code 2."""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration that cannot be validated: names the offending key and what was expected."""


class UsageError(Exception):
    """A command line that argparse (or the override pre-parsing) rejected, for the parser ``prog``."""

    def __init__(self, prog: str, message: str) -> None:
        super().__init__(f"{prog}: error: {message} (see `{prog} --help`)")
