"""ZeRO stages, bf16 and gradient accumulation through the engine (1 process, CPU), and the real embedded
teacher with a shipped experiment config."""

from __future__ import annotations

import pytest
import torch
from engine_helpers import tiny_config
from safetensors.torch import load_file

from pretrain_distill.core.checkpoint_trust import read_metadata
from pretrain_distill.core.config_loading import CONFIG_ROOT
from pretrain_distill.core.metrics_log import read_metrics
from pretrain_distill.engine import train
from pretrain_distill.engine.checkpoint import CheckpointStore
from pretrain_distill.export import end_of_run
from pretrain_distill.run_config import load_run_config


def _run(teacher, shards, out, *extra):
    run_dir = train(tiny_config(teacher, shards, out, "train.max_steps=4", "train.save_every=100", *extra))
    records = read_metrics(run_dir / "logs" / "metrics.jsonl")
    latest = CheckpointStore(run_dir / "checkpoints", 1).latest()
    weights = load_file(latest / "student" / "model.safetensors")
    return [r["loss"] for r in records], weights, read_metadata(latest), [r["grad_norm"] for r in records]


# ZeRO-3 calls all_gather_into_tensor / reduce_scatter_tensor, which torch 2.13 deprecates.
@pytest.mark.filterwarnings("ignore:`torch.distributed.*is deprecated:FutureWarning")
def test_zero_stages_0_2_3_train_identically(tiny_teacher_dir, tiny_shards, tmp_path):
    runs = {
        stage: _run(tiny_teacher_dir, tiny_shards, tmp_path / f"z{stage}", f"train.zero_stage={stage}")
        for stage in (0, 2, 3)
    }
    losses2, weights2, _, norms2 = runs[2]
    for stage in (0, 3):
        losses, weights, _, norms = runs[stage]
        torch.testing.assert_close(torch.tensor(losses), torch.tensor(losses2), rtol=1e-5, atol=0)
        # ZeRO-0 fp32: measured by the trainer; ZeRO-2/3: DeepSpeed's own record. Same pre-clip norm.
        torch.testing.assert_close(torch.tensor(norms), torch.tensor(norms2), rtol=1e-4, atol=0)
        for name in weights2:
            torch.testing.assert_close(weights[name], weights2[name], rtol=1e-5, atol=1e-6, msg=name)


def test_bf16_trains_close_to_fp32_and_exports_fp32(tiny_teacher_dir, tiny_shards, tmp_path):
    fp32, _, _, _ = _run(tiny_teacher_dir, tiny_shards, tmp_path / "fp32")
    bf16, weights, _, _ = _run(tiny_teacher_dir, tiny_shards, tmp_path / "bf16", "train.precision=bf16")
    torch.testing.assert_close(torch.tensor(bf16), torch.tensor(fp32), rtol=2e-2, atol=0)
    assert bf16[-1] < bf16[0]
    assert all(w.dtype == torch.float32 for w in weights.values())


def test_gradient_accumulation_counts_optimizer_steps(tiny_teacher_dir, tiny_shards, tmp_path):
    losses, _, meta, _ = _run(
        tiny_teacher_dir, tiny_shards, tmp_path / "accum", "train.zero_stage=1", "train.grad_accum=2"
    )
    assert len(losses) == 4 and losses[-1] < losses[0]
    assert meta["state"]["step"] == 4 and meta["state"]["micro_step"] == 8


@pytest.mark.integration
def test_shipped_minilm_experiment_trains_with_the_real_teacher(teacher_dir, tiny_shards, tmp_path):
    cfg = load_run_config(
        [str(CONFIG_ROOT / "experiments" / "minilm_3l_minilmv2.yaml")],
        [
            f"data.shards={tiny_shards}",
            "data.num_workers=0",
            f"train.output_dir={tmp_path / 'run'}",
            "train.device=cpu",
            "train.micro_batch_size=4",
            "train.max_steps=2",
            "train.log_every=1",
        ],
    )
    run_dir = train(cfg, on_end=end_of_run)
    records = read_metrics(run_dir / "logs" / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2]
    assert all(r["loss_minilmv2"] > 0 for r in records)
    from transformers import AutoModel

    assert AutoModel.from_pretrained(run_dir / "export").config.num_hidden_layers == 3


def test_zero2_clips_on_the_device_as_deepspeed_clips(tiny_teacher_dir, tiny_shards, tmp_path):
    """A binding clip (0.01, under the norms): ZeRO-2, where the engine clips on the device, trains as
    ZeRO-0, where DeepSpeed clips; without the clip the run is another one."""
    clip = "train.grad_clip=0.01"
    _, weights0, _, norms0 = _run(tiny_teacher_dir, tiny_shards, tmp_path / "z0", clip, "train.zero_stage=0")
    _, weights2, _, norms2 = _run(tiny_teacher_dir, tiny_shards, tmp_path / "z2", clip, "train.zero_stage=2")
    _, free, _, _ = _run(
        tiny_teacher_dir, tiny_shards, tmp_path / "free", "train.grad_clip=0", "train.zero_stage=2"
    )
    assert min(norms2) > 0.01
    torch.testing.assert_close(torch.tensor(norms2), torch.tensor(norms0), rtol=1e-4, atol=0)
    for name in weights0:
        torch.testing.assert_close(weights2[name], weights0[name], rtol=1e-5, atol=1e-6, msg=name)
    assert any(not torch.allclose(free[name], weights2[name]) for name in weights2)


def test_device_clipping_by_hand_and_a_non_finite_norm_skips_the_step():
    """DeepSpeed's formula, grads * 1 / max(1, (norm + 1e-6) / clip); a NaN norm sets found_inf."""
    from types import SimpleNamespace

    from pretrain_distill.engine.trainer import Trainer

    param = torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.AdamW([param], fused=True)
    optimizer.found_inf = torch.zeros(())
    fake = SimpleNamespace(
        engine=SimpleNamespace(optimizer=SimpleNamespace()),
        cfg=load_run_config(overrides=["train.grad_clip=1.0"]),
    )
    for norm, grad, found in ((5.0, [0.6, 0.8], 0.0), (0.5, [3.0, 4.0], 0.0), (float("nan"), None, 1.0)):
        param.grad = torch.tensor([3.0, 4.0])
        fake.engine.optimizer._global_grad_norm = torch.tensor(norm)
        Trainer._clip_on_device(fake, optimizer)
        if grad is not None:
            torch.testing.assert_close(
                param.grad, torch.tensor(grad) * (norm / (norm + 1e-6) if norm > 1 else 1.0)
            )
        assert float(optimizer.found_inf) == found
