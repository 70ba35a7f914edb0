"""The one override syntax of both tools: which tokens of a command line are config overrides, and what
they mean.

An override is ``key=value`` or ``--key value`` / ``--key=value`` for any ``--key`` that is not one of the
command's own options; the key is a dotted config path (``train.lr``), the value is parsed as YAML
(``3e-4``, ``[[2], [4]]``, ``null``, ``true``). ``--config FILE`` is the same as a positional YAML file.
"""

from __future__ import annotations

import argparse
import json
import re

import yaml

from pretrain_distill.core.errors import ConfigError, UsageError

OVERRIDE = re.compile(r"^[A-Za-z_][\w.\-]*=")


def split_command_line(parser: argparse.ArgumentParser, tokens: list[str]) -> tuple[list[str], list[str]]:
    """Separate a config command's own arguments from its overrides, whatever their order.

    Returns ``(arguments for argparse, overrides in command-line order)``; ``--config FILE`` becomes the
    positional ``FILE``. A token right after one of the command's own options that takes a value is that
    option's value, even when it looks like ``key=value``.
    """
    options = parser._option_string_actions
    args, overrides = [], []
    i = 0
    while i < len(tokens):
        token = tokens[i]
        name = token.split("=", 1)[0]
        if token == "--":
            args += tokens[i:]
            break
        if name == "--config":
            if "=" in token:
                args.append(token.split("=", 1)[1])
            elif i + 1 < len(tokens):
                args.append(tokens[i + 1])
                i += 1
            else:
                raise UsageError(parser.prog, "argument --config: expected a YAML file")
        elif name in options:
            args.append(token)
            action = options[name]
            if "=" not in token and action.nargs in (None, 1) and i + 1 < len(tokens):
                args.append(tokens[i + 1])  # its value, even if it looks like key=value
                i += 1
        elif token.startswith("--") and len(token) > 2:
            overrides.append(token)
            if "=" not in token and i + 1 < len(tokens):
                overrides.append(tokens[i + 1])
                i += 1
        elif OVERRIDE.match(token):
            overrides.append(token)
        else:
            args.append(token)
        i += 1
    return args, overrides


def parse_overrides(items: list[str]) -> dict:
    """Turn ``["a.b=1", "--a.c", "x", "--flag=2"]`` into a nested mapping of YAML-parsed values."""
    out: dict = {}
    i = 0
    while i < len(items):
        item = items[i]
        if item.startswith("--"):
            item = item[2:]
            if "=" not in item:
                if i + 1 >= len(items):
                    raise ConfigError(f"override --{item} has no value")
                item = f"{item}={items[i + 1]}"
                i += 1
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value or --key value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
        i += 1
    return out


def command_line_overrides(args: argparse.Namespace) -> list[str]:
    """The overrides of a parsed command line in the order they apply: ``key=value`` / ``--key value``
    tokens first, then the options declared with
    ``command_line.add_config_option`` that were given (JSON values: a string stays one)."""
    options = getattr(args, "config_options", {}) or {}
    given = [
        f"{key}={json.dumps(getattr(args, dest))}"
        for dest, key in options.items()
        if getattr(args, dest, None) is not None
    ]
    return list(getattr(args, "overrides", []) or []) + given
