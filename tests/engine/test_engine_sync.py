"""The training loop never makes the host wait for the device between two boundaries (log line,
checkpoint, stop): no ``.item()`` / ``bool()`` / ``.tolist()`` / ``nonzero`` / boolean-mask index ... in
the steady-state steps, from our code or from the libraries' code on our behalf.

On CPU nothing synchronises, so the test counts the calls that would (every Tensor method that reads
device memory on the host, ``torch.nonzero`` / ``masked_select``, and boolean-mask indexing, whose output
shape depends on the data) while the real ``Trainer`` runs with DeepSpeed ZeRO-2 in bf16, the GPU
configuration, for every objective, on batches with and without padding. Allowed: the boundary work
(``_settle``, ``_log``, ``save``), and the data pipeline's host tensors: :func:`plan_batch` reads the
loader's CPU mask and the host-drawn MLM labels (checked to be exactly those), never a device tensor.
Nothing else is, transformers' and DeepSpeed's code included (the model's mask is prepared without
``padding_mask.all()``; ZeRO-1/2 clipping runs on the device). On CUDA the same window runs under
``torch.cuda.set_sync_debug_mode("error")``.
"""

from __future__ import annotations

import json
import subprocess
import traceback
from collections import Counter

import pytest
import torch
from engine_helpers import (
    REPO,
    TRAIN_AND_DUMP_WEIGHTS,
    tiny_config,
    tiny_overrides,
)

import pretrain_distill.objectives.distiller as distiller_module
from pretrain_distill.core.checkpoint_trust import read_metadata
from pretrain_distill.core.metrics_log import MetricsLogger, read_metrics
from pretrain_distill.engine.checkpoint import CheckpointStore
from pretrain_distill.engine.signals import PreemptionFlag
from pretrain_distill.engine.trainer import Trainer
from tests.launch import subprocess_env, torchrun

_READS = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "numpy", "cpu", "nonzero")
_READS += ("masked_select",)
_FUNCTIONS = ("nonzero", "masked_select", "argwhere")  # torch.* functions with data-dependent shapes
OBJECTIVES = {
    "hs": ["objective.weights={hs: 1.0}"],
    "od": ["objective.weights={od: 1.0}"],  # on the masked positions (the tiny teacher has an MLM head)
    "minilmv2": ["objective.weights={minilmv2: 1.0}", "objective.relation_heads=4"],
    "direct_minilm": ["objective.weights={direct_minilm: 1.0}"],
    "od_all+mlm": ["objective.weights={od: 1.0, mlm: 0.5}", "objective.od_positions=all"],
}


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


def _has_bool_mask(index) -> bool:
    parts = index if isinstance(index, tuple) else (index,)
    return any(isinstance(p, torch.Tensor) and p.dtype == torch.bool for p in parts)


def _patch_reads(monkeypatch, window: _Window) -> None:
    def counting(original, name):
        def counted(*args, **kwargs):
            window.record(name)
            return original(*args, **kwargs)

        return counted

    for name in _READS:
        monkeypatch.setattr(torch.Tensor, name, counting(getattr(torch.Tensor, name), name))
    for name in _FUNCTIONS:
        monkeypatch.setattr(torch, name, counting(getattr(torch, name), f"torch.{name}"))
    getitem, setitem = torch.Tensor.__getitem__, torch.Tensor.__setitem__

    def indexed(self, index):
        if _has_bool_mask(index):
            window.record("boolean-mask indexing")
        return getitem(self, index)

    def assigned(self, index, value):
        if _has_bool_mask(index):
            window.record("boolean-mask assignment")
        return setitem(self, index, value)

    monkeypatch.setattr(torch.Tensor, "__getitem__", indexed)
    monkeypatch.setattr(torch.Tensor, "__setitem__", assigned)


def _pause_in(monkeypatch, window: _Window, owner, name: str, check=None) -> None:
    original = getattr(owner, name)

    def paused(*args, **kwargs):
        if check is not None:
            check(*args, **kwargs)
        window.paused += 1
        try:
            return original(*args, **kwargs)
        finally:
            window.paused -= 1

    monkeypatch.setattr(owner, name, paused)


def _boundaries_pause(monkeypatch, window: _Window) -> None:
    for name in ("_settle", "_log", "save"):
        _pause_in(monkeypatch, window, Trainer, name)
    log = MetricsLogger.log

    def log_then_open(self, step, metrics):
        log(self, step, metrics)
        window.open = True  # the first log line ends the warm-up

    monkeypatch.setattr(MetricsLogger, "log", log_then_open)


def _host_tensors_only(monkeypatch, window: _Window, padded: bool) -> list[torch.Tensor]:
    """Batches with padding (the last 3 tokens of the first row) or none at all; ``plan_batch`` may read
    only the masks the loader yielded (kept here) and labels drawn from them on the host."""
    yielded: list[torch.Tensor] = []
    batches = Trainer._batches

    def shaped(self):
        for batch in batches(self):
            mask = batch["attention_mask"]
            if padded:
                mask[0, -3:] = 0  # a plain slice: the host tensor, before anything moves
                batch["input_ids"][0, -3:] = self.tokenizer.pad_token_id
            else:
                mask.fill_(1)
            yielded.append(mask)
            yield batch

    def check(attention_mask, labels, *args, **kwargs):
        assert any(m is attention_mask for m in yielded), "plan_batch got a mask the loader did not yield"
        assert labels is None or labels.device.type == "cpu"

    monkeypatch.setattr(Trainer, "_batches", shaped)
    _pause_in(monkeypatch, window, distiller_module, "plan_batch", check)
    return yielded


def _config(teacher, shards, out, objective: str, device: str, *extra: str):
    return tiny_config(
        teacher,
        shards,
        out,
        *OBJECTIVES[objective],
        f"train.device={device}",
        "train.precision=bf16",
        "train.deepspeed=deepspeed/zero2.json",
        "train.max_steps=6",
        "train.log_every=3",
        "train.save_every=100",
        "train.grad_accum=2",
        "train.grad_clip=0.01",  # binding: the device clipping runs
        "train.export=false",
        *extra,
    )


@pytest.mark.parametrize("padded", [False, True], ids=["no-padding", "padding"])
@pytest.mark.parametrize("objective", sorted(OBJECTIVES))
def test_no_host_read_between_log_lines(
    objective, padded, tiny_teacher_dir, tiny_shards, tmp_path, monkeypatch
):
    window = _Window()
    trainer = Trainer(_config(tiny_teacher_dir, tiny_shards, tmp_path / "run", objective, "cpu"))
    _patch_reads(monkeypatch, window)
    _boundaries_pause(monkeypatch, window)
    yielded = _host_tensors_only(monkeypatch, window, padded)
    with PreemptionFlag() as preemption:
        trainer.fit(preemption)
    assert window.open and len(yielded) == 12  # the window did cover steps 4-6 (2 micro-batches each)
    assert window.reads == [], "\n".join(f"{n} x {r}" for r, n in Counter(window.reads).most_common())


def test_zero0_fp32_steps_without_a_read(tiny_teacher_dir, tiny_shards, tmp_path, monkeypatch):
    """The CPU / fp32 configuration: DeepSpeed passes the step to our AdamW and clips on the device."""
    window = _Window()
    extra = ("train.precision=fp32", "train.deepspeed=deepspeed/zero0.json")
    trainer = Trainer(_config(tiny_teacher_dir, tiny_shards, tmp_path / "run", "hs", "cpu", *extra))
    _patch_reads(monkeypatch, window)
    _boundaries_pause(monkeypatch, window)
    _host_tensors_only(monkeypatch, window, padded=True)
    with PreemptionFlag() as preemption:
        trainer.fit(preemption)
    assert window.open and window.reads == [], window.reads


def test_the_counter_sees_a_read(monkeypatch):
    """The patched methods do count: a loop that read its loss each step would fail the test above."""
    window = _Window()
    _patch_reads(monkeypatch, window)
    window.open = True
    loss = torch.tensor(1.5)
    float(loss), loss.item(), bool(loss > 0), torch.ones(3)[torch.tensor([True, False, True])]
    torch.nonzero(torch.ones(2)), loss.masked_select(loss > 0)
    torch.zeros(3)[torch.tensor([True, False, True])] = 1.0
    assert [r.split(" at ")[0] for r in window.reads] == [
        "__float__",
        "item",
        "__bool__",
        "boolean-mask indexing",
        "torch.nonzero",
        "masked_select",
        "boolean-mask assignment",
    ]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("padded", [False, True], ids=["no-padding", "padding"])
@pytest.mark.parametrize("objective", sorted(OBJECTIVES))
def test_no_cuda_sync_between_log_lines(
    objective, padded, tiny_teacher_dir, tiny_shards, tmp_path, monkeypatch
):
    """On the GPU: the steady-state steps run under ``set_sync_debug_mode("error")``, all of them but the
    boundaries (reads of CPU tensors, ``plan_batch``'s, are no synchronisation)."""
    trainer = Trainer(_config(tiny_teacher_dir, tiny_shards, tmp_path / "run", objective, "cuda"))
    _host_tensors_only(monkeypatch, _Window(), padded)
    seen = []
    for name in ("_settle", "_log", "save"):
        original = getattr(Trainer, name)

        def relaxed(self, *args, _original=original, **kwargs):
            mode = torch.cuda.get_sync_debug_mode()
            torch.cuda.set_sync_debug_mode(0)
            try:
                return _original(self, *args, **kwargs)
            finally:
                torch.cuda.set_sync_debug_mode(mode)

        monkeypatch.setattr(Trainer, name, relaxed)
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
    assert seen == [3, 6]


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
    cmd = torchrun(str(script), json.dumps(tiny_overrides(tiny_teacher_dir, tiny_shards, out, *extra)))
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
