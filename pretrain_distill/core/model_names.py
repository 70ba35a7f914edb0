"""A model named in a config or on a command line: the embedded teacher (``minilm``), a local directory,
or a Hugging Face hub id.

:func:`find_model` is the start-up check of such a name. An existing directory is taken as it is; a name
shaped like a hub id (``name`` or ``org/name``) that is no local directory is looked up on the hub once
(its config, cached afterwards), so that an offline machine, a typo or a missing local directory is
reported naming the setting and the model, instead of transformers' anonymous "couldn't connect" after
its retries; any other missing path is a missing directory.
"""

from __future__ import annotations

import re
from pathlib import Path

from transformers import AutoConfig

from pretrain_distill.core.assets import resolve_model_path
from pretrain_distill.core.errors import ConfigError

#: What the hub accepts as a model id: ``name`` or ``org/name``.
HUB_ID = re.compile(r"[\w-][\w.-]*(/[\w-][\w.-]*)?")


def find_model(name: str, key: str) -> str:
    """The directory or hub id ``name`` (``key``: the setting that named it) stands for; a
    :class:`ConfigError` naming both when it is neither a local directory nor a model the hub gives."""
    path = resolve_model_path(name)
    if Path(path).expanduser().is_dir():
        return path
    if not HUB_ID.fullmatch(path):
        raise ConfigError(f"{key}: model directory not found: {path}")
    try:
        AutoConfig.from_pretrained(path)
    except OSError as err:
        reason = re.split(r"\.\s", str(err).strip())[0].rstrip(".")  # its first sentence
        raise ConfigError(
            f"{key}: {path!r} is no local model directory, and the hub cannot give it ({reason})"
        ) from None
    return path
