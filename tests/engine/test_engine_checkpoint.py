"""Atomic checkpoint directories, keep-last-K, newest-complete discovery, RNG state round trip."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from pretrain_distill.core.checkpoint_trust import COMPLETE, CheckpointError, read_metadata, verify_checkpoint
from pretrain_distill.engine.checkpoint import (
    CheckpointStore,
    restricted_torch_load,
    rng_state,
    set_aside,
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
    meta = read_metadata(latest)
    assert meta["step"] == 30 and meta["world_size"] == 1 and set(meta["files"]) == {"weights.pt"}
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
    tensors, data = rng_state()
    json.loads(json.dumps(data))  # plain JSON, no pickle
    first = (
        random.random(),
        np.random.rand(),
        torch.rand(3),
        torch.nn.functional.dropout(torch.ones(8), 0.5),
    )
    set_rng_state(tensors, data)
    again = (
        random.random(),
        np.random.rand(),
        torch.rand(3),
        torch.nn.functional.dropout(torch.ones(8), 0.5),
    )
    assert first[0] == again[0] and first[1] == again[1]
    assert torch.equal(first[2], again[2]) and torch.equal(first[3], again[3])


def test_rng_file_round_trip(tmp_path):
    from pretrain_distill.engine.state import load_rng, save_rng

    save_rng(tmp_path / "rank.safetensors")
    first = (random.random(), np.random.rand(), torch.rand(3))
    load_rng(tmp_path / "rank.safetensors")
    again = (random.random(), np.random.rand(), torch.rand(3))
    assert first[:2] == again[:2] and torch.equal(first[2], again[2])


def test_complete_marker_records_sizes_and_checksums(tmp_path):
    store = CheckpointStore(tmp_path, keep_last=3)
    staged = store.begin(4)
    (staged / "sub").mkdir()
    (staged / "sub" / "w.bin").write_bytes(b"abc")
    path = store.commit(4, {})
    files = read_metadata(path)["files"]
    assert files == {
        "sub/w.bin": {
            "bytes": 3,
            "sha256": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
        }
    }
    assert verify_checkpoint(path)["step"] == 4


@pytest.mark.parametrize(
    "damage,message",
    [
        ("truncate", "2 bytes, 3 were written"),
        ("flip", "checksum differs"),
        ("delete", "missing from checkpoint"),
        ("marker", "unreadable marker"),
    ],
)
def test_verify_names_the_damaged_file(tmp_path, damage, message):
    store = CheckpointStore(tmp_path, keep_last=3)
    staged = store.begin(4)
    (staged / "w.bin").write_bytes(b"abc")
    path = store.commit(4, {})
    target = path / ("COMPLETE" if damage == "marker" else "w.bin")
    if damage == "truncate":
        target.write_bytes(b"ab")
    elif damage == "flip":
        target.write_bytes(b"abd")
    elif damage == "delete":
        target.unlink()
    else:
        target.write_text(target.read_text()[:20])
    with pytest.raises(CheckpointError, match=message) as err:
        verify_checkpoint(path)
    assert str(target) in str(err.value)


def test_set_aside_moves_the_old_run(tmp_path):
    for name in ("checkpoints/step_00000010", "logs", "export"):
        (tmp_path / name).mkdir(parents=True)
    (tmp_path / "config.yaml").write_text("a: 1")
    (tmp_path / "notes.txt").write_text("mine")
    aside = set_aside(tmp_path)
    assert aside.parent == tmp_path and aside.name.startswith("replaced-")
    assert (aside / "checkpoints" / "step_00000010").is_dir() and (aside / "config.yaml").is_file()
    assert not (tmp_path / "checkpoints").exists() and (tmp_path / "notes.txt").is_file()
    assert set_aside(tmp_path / "empty_dir_not_there") is None


def test_restricted_load_refuses_code_and_reads_deepspeed_classes(tmp_path):
    from deepspeed.runtime.fp16.loss_scaler import LossScaler

    torch.save({"scaler": LossScaler(1.0), "t": torch.ones(2)}, tmp_path / "ok.pt")
    torch.save({"evil": _Evil()}, tmp_path / "evil.pt")
    with restricted_torch_load():
        assert torch.equal(torch.load(tmp_path / "ok.pt")["t"], torch.ones(2))
        with pytest.raises(Exception, match="Weights only load failed"):
            torch.load(tmp_path / "evil.pt", weights_only=False)  # the flag cannot be turned off
    assert torch.load is torch.serialization.load


class _Evil:
    def __reduce__(self):
        return (print, ("this would run on load",))
