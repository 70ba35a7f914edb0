"""The training loop never makes the host wait for the device between two boundaries (log line,
checkpoint, stop): no ``.item()`` / ``bool()`` / ``.tolist()`` / ``.cpu()`` ... in the steady-state steps.

On CPU nothing synchronises, so the test counts the calls that would (every Tensor method that reads
device memory on the host, and boolean-mask indexing, whose output shape depends on the data) while the
real ``Trainer`` runs with DeepSpeed ZeRO-2 in bf16, the GPU configuration; the boundary work
(``_settle``, ``_log``, ``save``) is where reading is allowed and is left out. On CUDA the same window
runs under ``torch.cuda.set_sync_debug_mode("error")``.

The loop itself reads nothing. Three known reads remain outside it, pinned below so that a new one
fails the test: in the model forward, Hugging Face's mask helper asks ``padding_mask.all()`` to decide
whether SDPA may skip the mask, and the HS loss drops padding by boolean indexing before its
projections; in ``engine.step()`` at each optimizer step, DeepSpeed 0.19.8's ZeRO-1/2 gradient clipping
checks the norm on the host (``is_invalid_grad_norm`` in ``unscale_and_clip_grads``).
"""

from __future__ import annotations

import json
import subprocess
import sys
import traceback
from collections import Counter

import pytest
import torch
from engine_helpers import (
    REPO,
    TRAIN_AND_DUMP_WEIGHTS,
    free_port,
    subprocess_env,
    tiny_config,
    tiny_overrides,
)

from pretrain_distill.core.checkpoint_trust import read_metadata
from pretrain_distill.core.metrics_log import MetricsLogger, read_metrics
from pretrain_distill.engine.checkpoint import CheckpointStore
from pretrain_distill.engine.signals import PreemptionFlag
from pretrain_distill.engine.trainer import Trainer

# Reads outside the loop: the Distiller's forward and DeepSpeed's step (see the module docstring).
KNOWN_READS = {
    ("__bool__", "transformers/masking_utils.py"),
    ("boolean-mask indexing", "pretrain_distill/objectives/losses.py"),
    ("__bool__", "deepspeed/runtime/utils.py"),
}
_READS = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "numpy", "cpu", "nonzero")


class _Window:
    """Counts host reads of tensors after the first log line, outside the boundary methods."""

    def __init__(self) -> None:
        self.open = False
        self.paused = 0
        self.reads: list[str] = []

    def record(self, what: str) -> None:
        if self.open and not self.paused:
            frames = [f for f in traceback.extract_stack()[:-2] if "/torch/" not in f.filename]
            where = f"{frames[-1].filename}:{frames[-1].lineno}" if frames else "?"
            self.reads.append(f"{what} at {where}")


def _patch_reads(monkeypatch, window: _Window) -> None:
    for name in _READS:
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, _name=name, **kwargs):
            window.record(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    getitem = torch.Tensor.__getitem__

    def indexed(self, index):
        parts = index if isinstance(index, tuple) else (index,)
        if any(isinstance(p, torch.Tensor) and p.dtype == torch.bool for p in parts):
            window.record("boolean-mask indexing")
        return getitem(self, index)

    monkeypatch.setattr(torch.Tensor, "__getitem__", indexed)


def _boundaries_pause(monkeypatch, window: _Window) -> None:
    for name in ("_settle", "_log", "save"):
        original = getattr(Trainer, name)

        def paused(self, *args, _original=original, **kwargs):
            window.paused += 1
            try:
                return _original(self, *args, **kwargs)
            finally:
                window.paused -= 1

        monkeypatch.setattr(Trainer, name, paused)
    log = MetricsLogger.log

    def log_then_open(self, step, metrics):
        log(self, step, metrics)
        window.open = True  # the first log line ends the warm-up

    monkeypatch.setattr(MetricsLogger, "log", log_then_open)


def _config(teacher, shards, out, objective: str, device: str):
    return tiny_config(
        teacher,
        shards,
        out,
        f"objective.weights={{{objective}: 1.0}}",
        "objective.relation_heads=4",
        f"train.device={device}",
        "train.precision=bf16",
        "train.deepspeed=deepspeed/zero2.json",
        "train.max_steps=9",
        "train.log_every=3",
        "train.save_every=100",
        "train.grad_accum=2",
        "train.export=false",
    )


def _site(read: str) -> tuple[str, str]:
    what, where = read.split(" at ")
    for known_what, path in KNOWN_READS:
        if what == known_what and path in where:
            return what, path
    return what, where


@pytest.mark.parametrize("objective", ["hs", "minilmv2"])
def test_no_host_read_between_log_lines(objective, tiny_teacher_dir, tiny_shards, tmp_path, monkeypatch):
    window = _Window()
    trainer = Trainer(_config(tiny_teacher_dir, tiny_shards, tmp_path / "run", objective, "cpu"))
    _patch_reads(monkeypatch, window)
    _boundaries_pause(monkeypatch, window)
    with PreemptionFlag() as preemption:
        trainer.fit(preemption)
    assert window.open  # the window did cover steps 4-9 (two log intervals)
    outside = [r for r in window.reads if _site(r) not in KNOWN_READS]
    assert outside == [], "\n".join(f"{n} x {r}" for r, n in Counter(outside).most_common())


def test_the_counter_sees_a_read(monkeypatch):
    """The patched methods do count: a loop that read its loss each step would fail the test above."""
    window = _Window()
    _patch_reads(monkeypatch, window)
    window.open = True
    loss = torch.tensor(1.5)
    float(loss), loss.item(), bool(loss > 0), torch.ones(3)[torch.tensor([True, False, True])]
    assert [r.split(" at ")[0] for r in window.reads] == [
        "__float__",
        "item",
        "__bool__",
        "boolean-mask indexing",
    ]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("objective", ["hs", "minilmv2"])
def test_no_cuda_sync_between_log_lines(objective, tiny_teacher_dir, tiny_shards, tmp_path, monkeypatch):
    """On the GPU: the steady-state steps run under ``set_sync_debug_mode("error")`` (but for the
    boundaries, the Distiller's forward and DeepSpeed's step, whose known reads the CPU test pins)."""
    trainer = Trainer(_config(tiny_teacher_dir, tiny_shards, tmp_path / "run", objective, "cuda"))
    seen = []
    from pretrain_distill.objectives import Distiller

    relax = [(Trainer, "_settle"), (Trainer, "_log"), (Trainer, "save"), (Distiller, "forward")]
    for owner, name in [*relax, (type(trainer.engine), "step")]:
        original = getattr(owner, name)

        def relaxed(self, *args, _original=original, **kwargs):
            mode = torch.cuda.get_sync_debug_mode()
            torch.cuda.set_sync_debug_mode(0)
            try:
                return _original(self, *args, **kwargs)
            finally:
                torch.cuda.set_sync_debug_mode(mode)

        monkeypatch.setattr(owner, name, relaxed)
    log = MetricsLogger.log

    def log_then_strict(self, step, metrics):
        log(self, step, metrics)
        seen.append(step)
        torch.cuda.set_sync_debug_mode("error")

    monkeypatch.setattr(MetricsLogger, "log", log_then_strict)
    try:
        with PreemptionFlag() as preemption:
            trainer.fit(preemption)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert seen == [3, 6, 9]


POISON_RANK_1 = (
    """
from pretrain_distill.objectives import Distiller
original = Distiller.forward
def forward(self, *args, **kwargs):
    out = original(self, *args, **kwargs)
    if trainer.dist.rank == 1 and self.step == 1 and not getattr(self, "poisoned", False):
        self.poisoned = True  # the first micro-batch of step 2, on rank 1 only
        out = {k: v * float("nan") for k, v in out.items()}
    return out
Distiller.forward = forward
"""
    + TRAIN_AND_DUMP_WEIGHTS
)


@pytest.mark.slow
def test_two_ranks_skip_a_step_one_rank_found_non_finite(tiny_teacher_dir, tiny_shards, tmp_path):
    """Real settings (2 ranks, loader workers, accumulation, log line 1 step after the bad one): both ranks
    skip step 2 on the device, learn of it at the step-3 log line, redo it, and end identical."""
    out = tmp_path / "run"
    extra = ["data.num_workers=2", "train.grad_accum=2", "train.log_every=3", "train.max_steps=4"]
    extra += ["train.save_every=100", "train.nan_skip_budget=1", "train.export=false"]
    script = tmp_path / "child.py"
    script.write_text(POISON_RANK_1)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1"]
    cmd += [
        f"--master_port={free_port()}",
        str(script),
        json.dumps(tiny_overrides(tiny_teacher_dir, tiny_shards, out, *extra)),
    ]
    done = subprocess.run(cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "non-finite loss at step 2 (micro-batch 2, rank-local terms: hs=" in done.stderr
    rank0, rank1 = (torch.load(out / f"weights_rank{r}.pt") for r in (0, 1))
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), name
    assert all(torch.isfinite(v).all() for v in rank0.values())
    state = read_metadata(CheckpointStore(out / "checkpoints", 1).latest())["state"]
    assert (state["step"], state["nan_skipped"], state["micro_step"]) == (4, 1, 10)  # step 2 redone
    records = read_metrics(out / "logs" / "metrics.jsonl")
    assert [r["step"] for r in records] == [3, 4]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in records)
