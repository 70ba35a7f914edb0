"""The one resume rule of both stages: a resumed run is the same run.

Both stages keep the resolved config beside their checkpoints (``save_config``). On a resume the saved
config is compared with the new one: each stage's schema declares what may change when a run is
continued (``RESUME_MAY_CHANGE``: the budget, batch and world size, logging, checkpointing, devices,
where things are); every other key is the run's identity, and a change to it is refused, because the
steps after the resume would train another model or optimise another loss on top of the first one's.
A key added to a schema is therefore part of the identity until it is declared otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import yaml

from pretrain_distill.core.errors import ConfigError

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


def resume_changes(
    saved: dict[str, Any], current: dict[str, Any], may_change: Iterable[str]
) -> tuple[list[str], list[str]]:
    """``(identity changes, allowed changes)`` between a saved and a current config tree, each
    ``"key: old -> new"``: a key is allowed to change when it is one of ``may_change`` or inside one."""
    allowed = under(may_change)
    return config_changes(saved, current, lambda key: not allowed(key))


def check_same_run(
    saved: dict[str, Any],
    current: dict[str, Any],
    may_change: Iterable[str],
    refuse: Callable[[str], Exception],
) -> list[str]:
    """Raise ``refuse("key: old -> new; ...")`` when an identity key changed; return the allowed changes."""
    identity, other = resume_changes(saved, current, may_change)
    if identity:
        raise refuse("; ".join(identity))
    return other
