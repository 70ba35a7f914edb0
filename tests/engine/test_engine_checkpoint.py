"""Atomic checkpoint directories, keep-last-K, newest-complete discovery, RNG state round trip."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from pretrain_distill.engine.checkpoint import (
    COMPLETE,
    CheckpointStore,
    read_metadata,
    rng_state,
    set_rng_state,
)


def _save(store: CheckpointStore, step: int) -> None:
    staged = store.begin(step)
    (staged / "weights.pt").write_bytes(b"w" * 10)
    store.commit(step, {"world_size": 1})


def test_commit_makes_complete_and_keeps_last_k(tmp_path):
    store = CheckpointStore(tmp_path / "checkpoints", keep_last=2)
    assert store.latest() is None
    for step in (10, 20, 30):
        _save(store, step)
    assert [s for s, _ in store.complete()] == [20, 30]
    latest = store.latest()
    assert latest.name == "step_00000030" and (latest / "weights.pt").is_file()
    assert read_metadata(latest) == {"step": 30, "world_size": 1}
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))


def test_crash_mid_write_leaves_no_complete_checkpoint(tmp_path):
    store = CheckpointStore(tmp_path / "checkpoints", keep_last=3)
    _save(store, 10)

    def crashing_write(step):
        staged = store.begin(step)
        (staged / "weights.pt").write_bytes(b"partial")
        raise OSError("disk full")  # the process dies before commit

    with pytest.raises(OSError):
        crashing_write(20)
    assert store.latest().name == "step_00000010"
    assert [s for s, _ in store.complete()] == [10]
    # a directory that has the final name but no marker (e.g. copied by hand) is not complete either
    (tmp_path / "checkpoints" / "step_00000030").mkdir()
    assert store.latest().name == "step_00000010"
    # the next save clears the leftover staging directory
    _save(store, 40)
    assert not (tmp_path / "checkpoints" / ".tmp-step_00000020").exists()
    assert store.latest().name == "step_00000040"


def test_resaving_a_step_replaces_it(tmp_path):
    store = CheckpointStore(tmp_path, keep_last=3)
    _save(store, 5)
    staged = store.begin(5)
    (staged / "new.pt").write_bytes(b"n")
    final = store.commit(5, {})
    assert (final / "new.pt").is_file() and not (final / "weights.pt").exists()
    assert (final / COMPLETE).is_file()


def test_read_metadata_refuses_incomplete(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        read_metadata(tmp_path)


def test_keep_last_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="keep_last"):
        CheckpointStore(tmp_path, keep_last=0)


def test_rng_state_round_trip():
    state = rng_state()
    first = (
        random.random(),
        np.random.rand(),
        torch.rand(3),
        torch.nn.functional.dropout(torch.ones(8), 0.5),
    )
    set_rng_state(state)
    again = (
        random.random(),
        np.random.rand(),
        torch.rand(3),
        torch.nn.functional.dropout(torch.ones(8), 0.5),
    )
    assert first[0] == again[0] and first[1] == again[1]
    assert torch.equal(first[2], again[2]) and torch.equal(first[3], again[3])
