"""Typed, composable configuration for both stages: YAML files + overrides -> one validated object.

Composition rules (in order, later wins):

1. every file listed under a YAML file's ``defaults:`` key (paths relative to ``configs/`` or to the
   file itself, ``.yaml`` optional), recursively, in the order listed;
2. the file's own keys (deep-merged into what the defaults gave);
3. command-line overrides ``section.key=value`` or ``--section.key value`` (values parsed as YAML, so
   ``train.lr=3e-4``, ``objective.mapping=[[2],[4],[6]]`` and ``student.preset=null`` all work).

The merged mapping is validated into dataclasses: unknown keys and wrong types raise
:class:`ConfigError` naming the key (with a "did you mean" suggestion), and so do numbers outside the
range a dataclass declares for them in its ``RANGES`` class attribute (``{"lr": "> 0", ...}``). The
schemas are the stages' own (``pretrain_distill.run_config``, ``finetune.finetune_config``); each
dataclass documents its fields where they are declared. The override syntax is
:mod:`pretrain_distill.core.overrides`.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

from pretrain_distill.core.errors import ConfigError
from pretrain_distill.core.files import atomic_write_text
from pretrain_distill.core.overrides import parse_overrides

CONFIG_ROOT = Path(__file__).resolve().parents[2] / "configs"

T = TypeVar("T")


# --------------------------------------------------------------------------------------------------
# Loading and merging


def _resolve_path(name: str | Path, relative_to: Path | None) -> Path:
    candidates = []
    raw = Path(name)
    for base in ([relative_to] if relative_to else []) + [CONFIG_ROOT, Path.cwd()]:
        candidates += [base / raw, base / raw.with_suffix(raw.suffix or ".yaml")]
    candidates += [raw, raw.with_suffix(raw.suffix or ".yaml")]
    for path in candidates:
        if path.is_file():
            return path.resolve()
    raise ConfigError(f"config file not found: {name!s} (looked in {relative_to or '.'}, {CONFIG_ROOT})")


def deep_merge(base: dict, update: dict) -> dict:
    """Return ``base`` updated recursively by ``update`` (mappings merge, everything else replaces)."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def load_yaml(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict:
    """Load one YAML config with its ``defaults:`` resolved (see module docstring)."""
    path = _resolve_path(path, None) if not _seen else Path(path)
    if path in _seen:
        raise ConfigError(f"config defaults form a cycle: {' -> '.join(map(str, _seen + (path,)))}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must hold a mapping, got {type(data).__name__}")
    defaults = data.pop("defaults", []) or []
    if not isinstance(defaults, list):
        raise ConfigError(f"{path}: 'defaults' must be a list of config files")
    merged: dict = {}
    for entry in defaults:
        merged = deep_merge(merged, load_yaml(_resolve_path(entry, path.parent), _seen + (path,)))
    return deep_merge(merged, data)


# --------------------------------------------------------------------------------------------------
# Validation into dataclasses


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: expected one of {list(args)}, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return from_dict(tp, value, prefix=f"{key}.")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{key}: expected {len(args)} items, got {len(value)}")
            return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item_tp = args[0] if args else Any
        items = [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        ktp, vtp = args or (Any, Any)
        return {_coerce(k, ktp, key): _coerce(v, vtp, f"{key}.{k}") for k, v in value.items()}
    return _coerce_scalar(value, tp, key)


def _coerce_scalar(value: Any, tp: Any, key: str) -> Any:
    """A YAML scalar as ``tp`` (float, int, bool, str or a class the value already is)."""
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "5e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return str(value)
    if isinstance(value, tp):
        return value
    raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")


def from_dict(cls: type[T], data: dict, prefix: str = "") -> T:
    """Validate a nested mapping into the dataclass ``cls`` (unknown keys and wrong types raise)."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    unknown = [k for k in data if k not in names]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(str(key), names, n=1)
        hint = f" (did you mean {prefix}{close[0]}?)" if close else ""
        raise ConfigError(f"unknown config key {prefix}{key}{hint}; known keys: {', '.join(names)}")
    kwargs = {k: _coerce(v, hints[k], f"{prefix}{k}") for k, v in data.items()}
    try:
        obj = cls(**kwargs)
    except (TypeError, ValueError) as err:
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(f"{prefix.rstrip('.') or cls.__name__}: {err}") from err
    for name, spec in getattr(cls, "RANGES", {}).items():
        check_range(getattr(obj, name), spec, f"{prefix}{name}")
    return obj


_RANGE = re.compile(r"^\s*(?:(>=|>|<=|<)\s*(\S+)|([\[(])\s*(\S+)\s*,\s*(\S+)\s*([\])]))\s*$")


def check_range(value: Any, spec: str, key: str) -> None:
    """Check a number (or every number inside a list / tuple / dict value) against ``spec``.

    ``spec`` is ``">= 0"``, ``"> 0"``, ``"<= 1"``, ``"< 1"`` or an interval ``"[0, 1)"`` (square =
    closed, round = open). ``None`` and strings (e.g. ``"auto"`` alternatives) are not numbers: skipped.
    """
    if isinstance(value, dict):
        for k, v in value.items():
            check_range(v, spec, f"{key}.{k}")
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            check_range(v, spec, f"{key}[{i}]")
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    match = _RANGE.match(spec)
    if match is None:
        raise ValueError(f"bad range spec {spec!r} for {key}")
    op, bound, left, lo, hi, right = match.groups()
    if op:
        b = float(bound)
        ok = {">=": value >= b, ">": value > b, "<=": value <= b, "<": value < b}[op]
        wanted = f"{op} {bound}"
    else:
        ok = (value >= float(lo) if left == "[" else value > float(lo)) and (
            value <= float(hi) if right == "]" else value < float(hi)
        )
        wanted = f"in {left}{lo}, {hi}{right}"
    if not ok or value != value:  # NaN is in no range
        raise ConfigError(f"{key}: must be {wanted}, got {value!r}")


def to_dict(obj: Any) -> Any:
    """Plain-Python (YAML-safe) view of a config dataclass."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def load_config(cls: type[T], files: list[str | Path] | None = None, overrides: list[str] | None = None) -> T:
    """Compose ``files`` (each with its ``defaults``), apply ``overrides``, validate into ``cls``."""
    merged: dict = {}
    for f in files or []:
        merged = deep_merge(merged, load_yaml(f))
    merged = deep_merge(merged, parse_overrides(list(overrides or [])))
    return from_dict(cls, merged)


def save_config(obj: Any, path: str | Path) -> Path:
    """Write the resolved config as YAML (beside every output, so any run can be repeated)."""
    return atomic_write_text(path, yaml.safe_dump(to_dict(obj), sort_keys=False))
