"""Shard files: plain tar, whatever temporary name the atomic write draws."""

from __future__ import annotations

import tarfile
import tempfile

import numpy as np
import pytest

from pretrain_distill.data.shards import write_shard


@pytest.mark.parametrize("suffix", ["gz", "xz", "bz2"])
def test_a_shard_is_plain_tar_even_when_its_temporary_name_ends_like_a_compressed_one(
    suffix, tmp_path, monkeypatch
):
    """webdataset's TarWriter picks compression from the file name's ending; the atomic write's random
    temporary name ends in ``gz`` / ``xz`` for about 1 shard in 700, which then came out compressed."""
    drawn = tempfile.mkstemp
    monkeypatch.setattr(tempfile, "mkstemp", lambda **kw: drawn(**kw, suffix=suffix))
    ids = np.arange(24, dtype=np.int32).reshape(3, 8)
    write_shard(tmp_path / "en-000000-0000.tar", ids, np.full(3, 8, dtype=np.int32), block_size=2)
    with tarfile.open(tmp_path / "en-000000-0000.tar", "r:") as tar:  # "r:" opens uncompressed tar only
        assert sorted(tar.getnames()) == [
            "000000.input_ids.npy",
            "000000.lengths.npy",
            "000001.input_ids.npy",
            "000001.lengths.npy",
        ]
