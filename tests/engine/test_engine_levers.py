"""Speed levers change how the step is computed, not its values: compiled layers, the teacher's bf16
weights, one large micro-batch instead of accumulated small ones, and the fused AdamW whose
``found_inf`` input the non-finite guard uses to skip a step on the device."""

from __future__ import annotations

import pytest
import torch

from pretrain_distill.core.errors import ConfigError
from pretrain_distill.engine.speed import compile_layers
from pretrain_distill.models import StudentSpec, build_student, build_teacher
from pretrain_distill.objectives import Distiller
from pretrain_distill.run_config import ObjectiveConfig, TeacherConfig

BF16_RTOL = 2**-7  # bf16 keeps 8 significant bits: one rounding of the inputs moves a value by <= 2^-8


def _distiller(teacher_dir, objective: str, teacher_dtype: str = "fp32") -> Distiller:
    torch.manual_seed(0)
    teacher = build_teacher(TeacherConfig(path=str(teacher_dir), dtype=teacher_dtype), "cpu")
    spec = StudentSpec(layers=2, heads=2, hidden=32, ffn=64)
    student = build_student(spec, teacher.config)
    cfg = ObjectiveConfig(weights={objective: 1.0}, relation_heads=4)
    return Distiller(cfg, student, teacher).eval()  # no dropout: runs are compared value for value


def _batch(vocab: int, rows: int = 4, length: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(1000, vocab, (rows, length), generator=generator)
    mask = torch.ones(rows, length, dtype=torch.long)
    mask[1, length // 2 :] = 0  # a padded row, as in real batches
    return ids, mask


def _losses_and_grads(distiller: Distiller, ids, mask) -> tuple[dict[str, float], list[torch.Tensor]]:
    distiller.zero_grad(set_to_none=True)
    losses = distiller(ids, mask)
    losses["loss"].backward()
    # A parameter the loss does not reach has no gradient in eager mode and a zero one when compiled.
    grads = [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in distiller.parameters()]
    return {k: float(v.detach()) for k, v in losses.items()}, grads


@pytest.mark.parametrize("objective", ["hs", "minilmv2"])
def test_compiled_layers_give_the_eager_losses_and_gradients(objective, tiny_teacher_dir, tokenizer):
    eager = _distiller(tiny_teacher_dir, objective)
    compiled = _distiller(tiny_teacher_dir, objective)  # same seed: same weights
    compile_layers(compiled, "aot_eager")  # dynamo + AOTAutograd, the front end inductor also uses
    ids, mask = _batch(len(tokenizer))
    want, want_grads = _losses_and_grads(eager, ids, mask)
    for _ in range(2):  # the second call runs the cached graphs
        got, got_grads = _losses_and_grads(compiled, ids, mask)
        assert got == pytest.approx(want, rel=1e-5)
        for g, w in zip(got_grads, want_grads, strict=True):
            torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6)


def test_unknown_compile_backend_is_a_config_error(tiny_teacher_dir):
    with pytest.raises(ConfigError, match="train.compile: unknown torch.compile backend 'fast'"):
        compile_layers(_distiller(tiny_teacher_dir, "hs"), "fast")


@pytest.mark.parametrize("objective", ["hs", "minilmv2"])
def test_teacher_in_bf16_weights_stays_within_bf16_rounding(objective, tiny_teacher_dir, tokenizer):
    ids, mask = _batch(len(tokenizer))
    fp32, _ = _losses_and_grads(_distiller(tiny_teacher_dir, objective, "fp32"), ids, mask)
    bf16, _ = _losses_and_grads(_distiller(tiny_teacher_dir, objective, "bf16"), ids, mask)
    # The teacher's weights and activations are rounded to bf16 in every one of its 2 layers.
    assert bf16 == pytest.approx(fp32, rel=8 * BF16_RTOL)
    assert bf16 != fp32  # the teacher did run in bf16


def test_one_large_micro_batch_equals_accumulated_small_ones(tiny_teacher_dir, tokenizer):
    """Full rows (packed shards): the mean over one 4-row batch = the mean of two 2-row halves, and so
    are the gradients, so micro_batch_size trades against grad_accum without changing the update."""
    distiller = _distiller(tiny_teacher_dir, "minilmv2")
    ids, mask = _batch(len(tokenizer))
    mask = torch.ones_like(mask)
    big, big_grads = _losses_and_grads(distiller, ids, mask)
    halves = [_losses_and_grads(distiller, ids[i : i + 2], mask[i : i + 2]) for i in (0, 2)]
    assert big["loss"] == pytest.approx(sum(h[0]["loss"] for h in halves) / 2, rel=1e-5)
    for g, a, b in zip(big_grads, halves[0][1], halves[1][1], strict=True):
        torch.testing.assert_close(g, (a + b) / 2, rtol=1e-4, atol=1e-6)


def _adamw(params, fused: bool) -> torch.optim.AdamW:
    return torch.optim.AdamW(params, lr=1e-2, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.01, fused=fused)


def test_fused_adamw_matches_the_default_one():
    torch.manual_seed(0)
    start = [torch.randn(8, 4), torch.randn(4)]
    runs = []
    for fused in (False, True):
        params = [p.clone().requires_grad_() for p in start]
        opt = _adamw(params, fused)
        for step in range(3):
            for p in params:
                p.grad = torch.sin(p.detach() * (step + 1))
            opt.step()
        runs.append(params)
    for a, b in zip(*runs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_found_inf_makes_the_fused_step_a_no_op():
    """What the non-finite guard relies on: with found_inf = 1 nothing moves, Adam's count included."""
    params = [torch.randn(8, 4, requires_grad=True)]
    opt = _adamw(params, fused=True)
    params[0].grad = torch.ones(8, 4)
    opt.found_inf = torch.tensor(0.0)
    opt.step()
    before = params[0].detach().clone()
    state = {k: v.clone() for k, v in opt.state[params[0]].items()}
    params[0].grad = torch.full((8, 4), float("nan"))
    opt.found_inf = torch.tensor(1.0)
    opt.step()
    assert torch.equal(params[0].detach(), before)
    for key, value in opt.state[params[0]].items():
        assert torch.equal(value, state[key]), key
