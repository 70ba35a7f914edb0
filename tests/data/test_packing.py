"""FULL-SENTENCES packing: [CLS] ... [SEP] framing, [SEP] between documents, long documents split."""

from __future__ import annotations

import numpy as np
import pytest

from pretrain_distill.data.packing import pack_documents

CLS, SEP, PAD = 101, 102, 0


def unpack(ids: np.ndarray, lengths: np.ndarray) -> list[int]:
    """The token stream the rows were cut from (documents joined by SEP)."""
    out: list[int] = []
    for row, n in zip(ids, lengths):
        assert row[0] == CLS and row[n - 1] == SEP and (row[n:] == PAD).all()
        out += row[1 : n - 1].tolist()
    return out


def test_documents_are_packed_contiguously_with_separators():
    docs = [list(range(1000, 1005)), list(range(2000, 2003)), list(range(3000, 3020))]
    ids, lengths = pack_documents(docs, 10, CLS, SEP, PAD)
    assert ids.dtype == np.uint16 and ids.shape[1] == 10
    assert (lengths[:-1] == 10).all()  # only the last row is padded
    assert unpack(ids, lengths) == docs[0] + [SEP] + docs[1] + [SEP] + docs[2]
    assert ids[0].tolist() == [CLS, 1000, 1001, 1002, 1003, 1004, SEP, 2000, 2001, SEP]


def test_long_document_continues_in_the_next_rows_untruncated():
    doc = list(range(5000, 5100))
    ids, lengths = pack_documents([doc], 12, CLS, SEP, PAD, dtype=np.int32)
    assert ids.dtype == np.int32 and len(ids) == 10  # 100 tokens / 10 per row
    assert unpack(ids, lengths) == doc


def test_no_row_starts_or_ends_with_a_dangling_separator():
    # The first document fills a row but one slot: a separator there would leave no room for text.
    ids, lengths = pack_documents([[7] * 7, [8] * 3], 10, CLS, SEP, PAD)
    assert ids[0].tolist() == [CLS] + [7] * 7 + [SEP, PAD] and lengths.tolist() == [9, 5]
    assert ids[1].tolist()[:5] == [CLS, 8, 8, 8, SEP]


def test_empty_documents_are_ignored_and_nothing_gives_no_rows():
    ids, lengths = pack_documents([[], [5]], 4, CLS, SEP, PAD)
    assert ids.tolist() == [[CLS, 5, SEP, PAD]] and lengths.tolist() == [3]
    ids, lengths = pack_documents([], 4, CLS, SEP, PAD)
    assert ids.shape == (0, 4) and lengths.shape == (0,)


def test_too_short_max_length_is_refused():
    with pytest.raises(ValueError, match="max_length must be >= 3"):
        pack_documents([[1]], 2, CLS, SEP, PAD)
