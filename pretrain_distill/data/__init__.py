"""The corpus pipeline: readers -> ``prepare`` (tokenized webdataset shards) -> stream -> masking.

Public names load lazily, so ``pretrain-distill prepare`` does not import torch:

- :func:`prepare_shards` (:mod:`.prepare`): sources -> shards + manifest.json
- :func:`build_dataloader`, :class:`ShardLoader`, :class:`ShardStream` (:mod:`.stream`)
- :class:`DynamicMasker` (:mod:`.masking`)
- :func:`parse_source`, :func:`iter_documents`, :class:`Document` (:mod:`.sources`, :mod:`.readers`)
- :class:`DataError`: every bad-input error, naming the file / shard and position
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "DataError": "errors",
    "Document": "readers",
    "parse_source": "sources",
    "iter_documents": "sources",
    "prepare_shards": "prepare",
    "load_manifest": "manifest",
    "build_dataloader": "stream",
    "ShardLoader": "stream",
    "ShardStream": "stream",
    "DynamicMasker": "masking",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
