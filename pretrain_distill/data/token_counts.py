"""How often each token id occurs in the prepared shards, per language (``prepare`` records it).

Each chunk's worker counts the real tokens of its packed rows (``[CLS]``, ``[SEP]`` and text, not the
padding: exactly what a model reads) and writes them beside its shard as ``<shard>.counts.npy``, a
``[2, n]`` int64 array of (id, count) pairs for the ids that occur (sparse: a 250k vocabulary stays
small per chunk). When every unit is done, the chunks' counts are summed per language into
``token_counts/<language>.npy`` (dense int64, one entry per token id) and the per-chunk files are
removed. Integer sums: the result is the same whatever the number of workers or the order of the units.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from pretrain_distill.core.files import atomic_path
from pretrain_distill.data.errors import DataError

COUNTS_DIR = "token_counts"
_CHUNK_SUFFIX = ".counts.npy"


def count_tokens(ids: np.ndarray, lengths: np.ndarray, vocab_size: int, pad_id: int) -> np.ndarray:
    """``[2, n]`` (id, count) of the real tokens of packed rows ``ids [rows, T]`` with ``lengths [rows]``
    (every position past a row's length holds ``pad_id``: counted over the whole array, then taken off)."""
    dense = np.bincount(ids.ravel(), minlength=vocab_size)
    dense[pad_id] -= ids.size - int(lengths.sum())
    present = np.flatnonzero(dense)
    return np.stack([present, dense[present]]).astype(np.int64)


def chunk_counts_path(shard: Path) -> Path:
    """Where a shard's chunk counts are kept until the manifest is written."""
    return shard.with_name(shard.name.removesuffix(".tar") + _CHUNK_SUFFIX)


def save_array(path: Path, array: np.ndarray) -> None:
    """``np.save`` atomically (a crash never leaves a half-written ``path``)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.save(handle, array, allow_pickle=False)


def merge_chunk_counts(
    split_dir: Path, shards: Iterable[tuple[str, str]], vocab_size: int
) -> dict[str, dict[str, Any]]:
    """Sum the chunk counts of ``shards`` = ``[(shard name relative to split_dir, language)]`` into
    ``split_dir/token_counts/<language>.npy``; returns the manifest entry ``{language: {file, tokens,
    distinct}}``. The chunk files stay (removed by :func:`remove_chunk_counts` once the manifest is out)."""
    totals: dict[str, np.ndarray] = {}
    for name, language in shards:
        pairs = np.load(chunk_counts_path(split_dir / name), allow_pickle=False)
        dense = totals.setdefault(language, np.zeros(vocab_size, dtype=np.int64))
        np.add.at(dense, pairs[0], pairs[1])
    entry = {}
    for language, dense in sorted(totals.items()):
        file = f"{COUNTS_DIR}/{language}.npy"
        save_array(split_dir / file, dense)
        entry[language] = {"file": file, "tokens": int(dense.sum()), "distinct": int(np.count_nonzero(dense))}
    return entry


def remove_chunk_counts(split_dir: Path, names: Iterable[str]) -> None:
    for name in names:
        chunk_counts_path(split_dir / name).unlink(missing_ok=True)


def load_token_counts(shard_dir: str | Path, manifest: dict[str, Any]) -> dict[str, np.ndarray]:
    """``{language: counts [vocab_size]}`` of a prepared shard directory; :class:`DataError` when the
    manifest has none (shards prepared before token counting: prepare them again)."""
    entries = manifest.get("token_counts")
    if entries is None:
        raise DataError(
            f"{shard_dir}: the manifest has no token counts (prepared by an older version): run "
            "`pretrain-distill prepare` again into a new --out"
        )
    vocab_size = manifest["tokenizer"]["vocab_size"]
    counts = {}
    for language, entry in entries.items():
        path = Path(shard_dir) / entry["file"]
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise DataError(f"{path}: unreadable token counts: {err}") from err
        if array.shape != (vocab_size,) or int(array.sum()) != entry["tokens"]:
            raise DataError(
                f"{path}: token counts of shape {array.shape} summing to {int(array.sum())}, the manifest "
                f"says ({vocab_size},) summing to {entry['tokens']}"
            )
        counts[language] = array
    return counts
