"""Pack tokenized documents into fixed-length BERT-style sequences (RoBERTa FULL-SENTENCES scheme).

Every sequence is ``[CLS] tokens [SEP]`` padded to ``max_length``. Documents are packed contiguously
and may cross a sequence boundary (a long document continues in the next sequence); two documents
in one sequence are separated by ``[SEP]``. A separator is only placed when at least one token of the
next document fits after it, so no sequence starts or ends with a dangling separator. Only the last
sequence of a packing run is padded.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np


def pack_documents(
    documents: Iterable[Sequence[int]],
    max_length: int,
    cls_id: int,
    sep_id: int,
    pad_id: int,
    dtype: np.dtype | type = np.uint16,
) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(input_ids [n, max_length], lengths [n])`` for the token-id ``documents`` (no specials)."""
    if max_length < 3:
        raise ValueError(f"max_length must be >= 3 ([CLS] token [SEP]), got {max_length}")
    room = max_length - 2
    rows: list[np.ndarray] = []
    lengths: list[int] = []
    current: list[np.ndarray] = []
    used = 0

    def flush() -> None:
        nonlocal current, used
        row = np.full(max_length, pad_id, dtype=dtype)
        row[0] = cls_id
        row[1 : used + 1] = np.concatenate(current)
        row[used + 1] = sep_id
        rows.append(row)
        lengths.append(used + 2)
        current, used = [], 0

    separator = np.array([sep_id], dtype=dtype)
    for doc in documents:
        ids = np.asarray(doc, dtype=dtype)
        if not len(ids):
            continue
        if used:
            if used + 1 < room:
                current.append(separator)
                used += 1
            else:
                flush()
        pos = 0
        while pos < len(ids):
            take = min(room - used, len(ids) - pos)
            current.append(ids[pos : pos + take])
            used += take
            pos += take
            if used == room:
                flush()
    if used:
        flush()
    if not rows:
        return np.zeros((0, max_length), dtype=dtype), np.zeros(0, dtype=np.int32)
    return np.stack(rows), np.asarray(lengths, dtype=np.int32)
