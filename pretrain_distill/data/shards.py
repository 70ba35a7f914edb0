"""The shard format: webdataset ``.tar`` files of pre-tokenized blocks, and their checked reader.

A shard holds its sequences in blocks of ``block_size`` rows (the last block may be shorter); block
``k`` is the webdataset sample ``"{k:06d}"`` with ``input_ids.npy`` (``[rows, max_length]``, uint16
when the vocabulary fits, else int32) and ``lengths.npy`` (``[rows]`` int32, real tokens per row;
the rest is padding). Reading checks every block against the manifest's counts, so a corrupt,
truncated or empty shard raises :class:`DataError` naming it.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import webdataset as wds
from webdataset.tariterators import group_by_keys, tar_file_expander

from pretrain_distill.core.files import atomic_path
from pretrain_distill.data.errors import DataError


def write_shard(path: Path, input_ids: np.ndarray, lengths: np.ndarray, block_size: int) -> None:
    """Write the rows as a shard, atomically (a crash never leaves a half-written ``path``)."""
    # A fixed mtime: re-running gives byte-identical shards.
    # compress=False: TarWriter would otherwise compress when the (random) temporary name ends in gz / xz.
    with atomic_path(path) as tmp, wds.TarWriter(str(tmp), mtime=0.0, compress=False) as writer:
        for k, start in enumerate(range(0, len(input_ids), block_size)):
            writer.write(
                {
                    "__key__": f"{k:06d}",
                    "input_ids.npy": np.ascontiguousarray(input_ids[start : start + block_size]),
                    "lengths.npy": np.ascontiguousarray(lengths[start : start + block_size]),
                }
            )


def read_rows(
    path: Path, start: int, stop: int, total: int, block_size: int, max_length: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(input_ids, lengths)`` pieces covering rows ``[start, stop)`` of a shard of ``total`` rows.

    Blocks before ``start`` are skipped without decoding. Raises :class:`DataError` naming the shard
    when it is unreadable, corrupt, or holds fewer rows / other shapes than the manifest says.
    """
    first_block = start // block_size
    expected_blocks = -(-total // block_size)
    row = first_block * block_size
    try:
        with open(path, "rb") as stream:
            samples = group_by_keys(tar_file_expander([{"url": str(path), "stream": stream}], eof_value=None))
            for k, sample in enumerate(samples):
                if row >= stop:
                    return
                if k < first_block:
                    continue
                if k >= expected_blocks or sample.get("__key__") != f"{k:06d}":
                    raise DataError(
                        f"shard {path}: unexpected block {sample.get('__key__')!r} at position {k}"
                    )
                rows = min(block_size, total - row)
                ids = _decode(sample, "input_ids.npy", (rows, max_length), path, k)
                lengths = _decode(sample, "lengths.npy", (rows,), path, k)
                lo, hi = max(start - row, 0), min(stop - row, rows)
                yield ids[lo:hi], lengths[lo:hi]
                row += rows
    except (OSError, tarfile.TarError, ValueError, EOFError) as err:
        if isinstance(err, DataError):
            raise
        reason = err.args[0] if isinstance(err, tarfile.TarError) and err.args else err  # not its stream
        raise DataError(f"shard {path}: unreadable at block {row // block_size}: {reason}") from err
    if row < stop:
        raise DataError(f"shard {path}: truncated or empty: ends at row {row}, the manifest says {total}")


def _decode(sample: dict, field: str, shape: tuple[int, ...], path: Path, k: int) -> np.ndarray:
    if field not in sample:
        raise DataError(f"shard {path}: block {k} has no {field}")
    array = np.load(io.BytesIO(sample[field]), allow_pickle=False)
    if array.shape != shape:
        raise DataError(f"shard {path}: block {k} {field} has shape {array.shape}, expected {shape}")
    return array
