"""What changed between the config a run was written with and the config it is continued with.

Both stages keep the resolved config beside their checkpoints (``save_config``); on a resume they
compare it with the new one, refuse the changes that would mix two runs into one, and report the
others. Which keys are which is each stage's decision (``pretrain_distill.engine.resume_config``,
``finetune.config.RESUME_MAY_CHANGE``); the comparison is this module's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import yaml

from pretrain_distill.configuration import ConfigError

_UNSET = object()  # a key one of the two configs does not have


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists, scalars and empty mappings are leaves)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def under(names: Iterable[str]) -> Callable[[str], bool]:
    """A predicate on flattened keys: the key is one of ``names`` or lies inside one of them."""
    names = tuple(names)
    return lambda key: any(key == name or key.startswith(f"{name}.") for name in names)


def config_changes(
    saved: dict[str, Any], current: dict[str, Any], fixed: Callable[[str], bool]
) -> tuple[list[str], list[str]]:
    """``(changes of fixed keys, other changes)`` between two config trees, each ``"key: old -> new"``,
    sorted by key. Values are compared as YAML stores them (a tuple equals the list it is read back as)."""
    old, new = (flatten(yaml.safe_load(yaml.safe_dump(tree)) or {}) for tree in (saved, current))
    lines = {
        key: f"{key}: {_show(old.get(key, _UNSET))} -> {_show(new.get(key, _UNSET))}"
        for key in sorted(old.keys() | new.keys())
        if old.get(key, _UNSET) != new.get(key, _UNSET)
    }
    return [v for k, v in lines.items() if fixed(k)], [v for k, v in lines.items() if not fixed(k)]


def _show(value: Any) -> str:
    """A value as it is written in a config or an override (null, true), or (unset)."""
    if value is _UNSET:
        return "(unset)"
    if value is None or isinstance(value, bool):
        return yaml.safe_dump(value).split("\n", 1)[0]
    return str(value)


def saved_config(path: Path) -> dict[str, Any]:
    """The config tree a run wrote to ``path``; :class:`ConfigError` naming the file if unreadable."""
    try:
        tree = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"{path}: cannot read the saved config: {err}") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: the saved config is not a mapping")
    return tree
