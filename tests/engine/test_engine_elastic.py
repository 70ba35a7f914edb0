"""Elastic resume: a checkpoint written by W ranks continues on W' ranks (and other loader workers).

Each case stops a run with SIGUSR1 (checkpoint at the step boundary), resumes it on another world size
and worker count, and checks that (1) the sequences of the interrupted epoch read before and after
the change are each of the epoch's sequences exactly once, and (2) the Adam moments, the learning
rate and the scheduler position the resumed run starts from are exactly those that were saved:
ZeRO-2 goes through DeepSpeed's universal checkpoint, ZeRO-0 loads its one optimizer state directly.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections import Counter

import pytest
import torch
from engine_helpers import REPO, tiny_overrides

from pretrain_distill.core.checkpoint_trust import read_metadata
from pretrain_distill.data.stream import ShardLoader, ShardStream
from pretrain_distill.engine.checkpoint import CheckpointStore
from tests.launch import subprocess_env, torchrun

pytestmark = pytest.mark.slow

CHILD = """
import hashlib, json, os, signal, sys, torch
from pretrain_distill.run_config import load_run_config
from pretrain_distill.data.stream import ShardLoader
from pretrain_distill.core.metrics_log import MetricsLogger
from pretrain_distill.engine.signals import PreemptionFlag
from pretrain_distill.engine.trainer import Preempted, Trainer
overrides, stop_at, tag = json.loads(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
cfg = load_run_config(overrides=overrides)
out = cfg.train.output_dir
log = MetricsLogger.log
def log_then_stop(self, step, metrics):
    log(self, step, metrics)
    if step == stop_at:
        os.kill(os.getpid(), signal.SIGUSR1)
MetricsLogger.log = log_then_stop
iterate = ShardLoader.__iter__
def recorded(self):
    for batch in iterate(self):
        with open(f"{out}/rows_{tag}_{self.dataset.rank}.jsonl", "a") as f:
            for row, mask in zip(batch["input_ids"], batch["attention_mask"]):
                digest = hashlib.sha1(row[mask.bool()].numpy().tobytes()).hexdigest()
                f.write(json.dumps([self.epoch, digest]) + "\\n")
        yield batch
ShardLoader.__iter__ = recorded
def dump(trainer, name):
    from deepspeed.utils import safe_get_full_optimizer_state
    state = {}
    optimizer = trainer.optimizer
    if hasattr(optimizer, "_lazy_init_hp_params_optimizer_state"):
        # ZeRO-1/2: refresh DeepSpeed's per-parameter views of the partitioned Adam state (on 2 ranks
        # they are missing after a run's steps; after a load they are set)
        optimizer._hp_optimizer_states_linked = False
        optimizer._lazy_init_hp_params_optimizer_state()
    for key, p in trainer.distiller.named_parameters():
        for moment in ("exp_avg", "exp_avg_sq"):
            if trainer.engine.zero_optimization():
                value = safe_get_full_optimizer_state(p, moment)  # collective: every rank calls it
            else:
                value = optimizer.state[p][moment]
            state[f"{moment}/{key}"] = value.detach().float().cpu().clone()
    state["lr"] = torch.tensor(trainer.optimizer.param_groups[0]["lr"], dtype=torch.float64)
    state["scheduler_step"] = torch.tensor(trainer.scheduler.last_epoch)
    if trainer.dist.is_main:
        torch.save(state, f"{out}/{name}.pt")
with PreemptionFlag() as flag:
    trainer = Trainer(cfg)
    if trainer.resume_from is not None:
        dump(trainer, "loaded")
    try:
        trainer.fit(flag)
    except Preempted:
        dump(trainer, "saved")
        sys.exit(75)
"""


def _launch(script, overrides: list[str], world: int, stop_at: int, tag: str) -> subprocess.CompletedProcess:
    args = [str(script), json.dumps(overrides), str(stop_at), tag]
    cmd = torchrun(*args, nproc=world) if world > 1 else [sys.executable, *args]
    return subprocess.run(cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=300)


def _epoch_rows(shards) -> Counter:
    """Every sequence of the shards, as the digest the child records."""
    rows = Counter()
    for batch in ShardLoader(ShardStream(shards, 8)):
        for row, mask in zip(batch["input_ids"], batch["attention_mask"]):
            rows[hashlib.sha1(row[mask.bool()].numpy().tobytes()).hexdigest()] += 1
    return rows


def _recorded(run_dir, tag: str, epoch: int) -> Counter:
    rows = Counter()
    for path in run_dir.glob(f"rows_{tag}_*.jsonl"):
        rows.update(digest for e, digest in map(json.loads, path.read_text().splitlines()) if e == epoch)
    return rows


@pytest.mark.parametrize(
    "stage,before,after",
    [(2, (2, 2), (1, 3)), (0, (1, 0), (2, 2))],  # (ZeRO stage, (ranks, workers) before, after)
    ids=["zero2-2to1-ranks", "zero0-1to2-ranks"],
)
def test_resume_on_another_world_size_reads_the_rest_once_and_keeps_optimizer_state(
    tiny_teacher_dir, tiny_shards, tmp_path, stage, before, after
):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    out = tmp_path / "run"
    common = ["train.max_steps=10", "train.save_every=100", f"train.zero_stage={stage}", "train.export=false"]

    def overrides(workers: int) -> list[str]:
        return tiny_overrides(tiny_teacher_dir, tiny_shards, out, *common, f"data.num_workers={workers}")

    first = _launch(script, overrides(before[1]), before[0], 2, "before")
    assert (out / "saved.pt").is_file(), first.stderr[-4000:]  # stopped by SIGUSR1, checkpoint saved
    latest = CheckpointStore(out / "checkpoints", 3).latest()
    assert read_metadata(latest)["world_size"] == before[0] and read_metadata(latest)["state"]["epoch"] == 0

    second = _launch(script, overrides(after[1]), after[0], 99, "after")
    assert second.returncode == 0, second.stderr[-4000:]
    assert "elastic resume" in second.stderr
    assert not (out / "universal").exists()  # the converted copy is removed once loaded
    assert read_metadata(CheckpointStore(out / "checkpoints", 3).latest())["state"]["step"] == 10

    # The interrupted epoch: every sequence exactly once over both jobs; the next epoch whole again.
    full = _epoch_rows(tiny_shards)
    assert _recorded(out, "before", 0) + _recorded(out, "after", 0) == full
    assert _recorded(out, "before", 0) and _recorded(out, "after", 0)
    assert set(_recorded(out, "after", 1)) <= set(full)

    saved, loaded = torch.load(out / "saved.pt"), torch.load(out / "loaded.pt")
    assert (
        set(saved) == set(loaded) and int(loaded["scheduler_step"]) == read_metadata(latest)["state"]["step"]
    )
    for key, value in saved.items():
        assert torch.equal(value, loaded[key]), key
    assert saved["exp_avg_sq/student.bert.embeddings.word_embeddings.weight"].abs().sum() > 0
