"""MiniLMv2 relation loss (eqs. 7-9): against a loop reference in float64, chunked == unchunked (values and
gradients), gradcheck, invariants, hand case, padding, dtypes, inference-mode teachers, errors, memory."""

from __future__ import annotations

import math

import pytest
import torch
from relation_reference import minilmv2_loss_autograd

from pretrain_distill.objectives import minilmv2_loss


def relation_reference(student_qkv, teacher_qkv, mask: torch.Tensor, A_r: int) -> torch.Tensor:
    """Loops over alpha, batch, relation head: relations built on the valid tokens only (so no masking
    trick is shared with the implementation), KL(R_T || R_S) per valid row, mean over (A_r * N_valid)."""
    total = torch.zeros((), dtype=torch.float64)
    n_valid = int(mask.sum())
    for s, t in zip(student_qkv, teacher_qkv):
        s64, t64 = s.double(), t.double()
        d_s, d_t = s.shape[-1] // A_r, t.shape[-1] // A_r
        for b in range(s.shape[0]):
            idx = torch.nonzero(mask[b]).flatten()
            if idx.numel() == 0:
                continue
            for a in range(A_r):
                xs = s64[b, idx, a * d_s : (a + 1) * d_s]
                xt = t64[b, idx, a * d_t : (a + 1) * d_t]
                log_rs = torch.log_softmax(xs @ xs.T / math.sqrt(d_s), dim=-1)
                log_rt = torch.log_softmax(xt @ xt.T / math.sqrt(d_t), dim=-1)
                # sum over the valid query rows of KL(row of R_T || row of R_S)
                total = total + (log_rt.exp() * (log_rt - log_rs)).sum()
    return total / (A_r * n_valid)


def make(B=3, T=6, dS=8, dT=12, dtype=torch.float32, seed=0, mask_kind="right"):
    g = torch.Generator().manual_seed(seed)
    student = [torch.randn(B, T, dS, generator=g, dtype=dtype).requires_grad_() for _ in range(3)]
    teacher = [torch.randn(B, T, dT, generator=g, dtype=dtype) * 1.5 for _ in range(3)]
    mask = torch.ones(B, T, dtype=torch.long)
    if mask_kind == "right":
        mask[1, T - 2 :] = 0
        mask[2:, 2:] = 0
    elif mask_kind == "holes":  # left padding and holes: the implementation must not assume right padding
        mask[0, 0] = 0
        mask[1, 1:3] = 0
        mask[2:, :4] = 0
    return student, teacher, mask


@pytest.mark.parametrize("mask_kind", ["right", "holes", "none"])
@pytest.mark.parametrize("A_r", [1, 2, 4])
def test_value_and_gradient_match_loop_reference(mask_kind: str, A_r: int) -> None:
    student, teacher, mask = make(mask_kind=mask_kind, dtype=torch.float64)
    ref = relation_reference(student, teacher, mask, A_r)
    ref_grads = torch.autograd.grad(ref, student)
    got = minilmv2_loss(student, teacher, None if mask_kind == "none" else mask, A_r, chunk_size=2)
    got_grads = torch.autograd.grad(got, student)
    assert got.item() == pytest.approx(ref.item(), rel=1e-10)
    for g, r in zip(got_grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-12)


def test_float32_matches_float64_reference() -> None:
    student, teacher, mask = make()
    ref = relation_reference(student, teacher, mask, 4)
    got = minilmv2_loss(student, teacher, mask, 4)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(ref.item(), rel=1e-5)


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 4, 5, 7, 12, 1000, None])
def test_chunked_equals_unchunked(chunk_size) -> None:
    # B * A_r = 12 slices: chunk sizes below, at, between and above A_r=4 and the whole grid
    student, teacher, mask = make(B=3, T=6, dS=8, dT=16)
    ref = minilmv2_loss_autograd(student, teacher, mask, 4)
    ref_grads = torch.autograd.grad(ref, student)
    got = minilmv2_loss(student, teacher, mask, 4, chunk_size=chunk_size)
    got_grads = torch.autograd.grad(got, student)
    assert got.item() == pytest.approx(ref.item(), rel=1e-6)
    for g, r in zip(got_grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-7)


def test_gradcheck_float64() -> None:
    student, teacher, mask = make(B=2, T=4, dS=4, dT=6, dtype=torch.float64, mask_kind="holes")

    def fn(q, k, v):
        return minilmv2_loss((q, k, v), teacher, mask, 2, chunk_size=3)

    assert torch.autograd.gradcheck(fn, tuple(student), fast_mode=True)


def test_zero_for_copy_and_per_side_scaling() -> None:
    _, teacher, mask = make(dT=12)
    assert minilmv2_loss(teacher, teacher, mask, 3).item() == pytest.approx(0.0, abs=1e-6)
    # Student twice as wide: each student relation head is [c * teacher head, 0] with c^4 = 2, so
    # (c^2 A A^T) / sqrt(2 d_r) = A A^T / sqrt(d_r): same relations. Fails if d_r were shared.
    c = 2.0**0.25
    wide = []
    for t in teacher:
        heads = t.view(*t.shape[:2], 3, 4)
        wide.append(torch.cat([c * heads, torch.zeros_like(heads)], -1).reshape(*t.shape[:2], 24))
    assert minilmv2_loss(wide, teacher, mask, 3).item() == pytest.approx(0.0, abs=1e-6)
    assert minilmv2_loss([w / c for w in wide], teacher, mask, 3).item() > 1e-4


def test_hand_computed() -> None:
    # T = 2, one head of width 1: teacher A = [1, 0] -> scores [[1, 0], [0, 0]]; student A = [0, 0] -> uniform.
    # Row 1: p = softmax([1, 0]), KL(p || 1/2) = sum p log(2p); row 2: 0. Mean over 2 rows, 3 alphas.
    teacher = [torch.tensor([[[1.0], [0.0]]])] * 3
    student = [torch.zeros(1, 2, 1)] * 3
    p = torch.softmax(torch.tensor([1.0, 0.0]), 0)
    expect = 3 * float((p * (2 * p).log()).sum()) / 2
    assert minilmv2_loss(student, teacher, None, 1).item() == pytest.approx(expect, rel=1e-6)
    # padding the second token: one valid row with one valid key -> both relations are [1]: loss 0
    assert minilmv2_loss(student, teacher, torch.tensor([[1, 0]]), 1).item() == pytest.approx(0.0, abs=1e-7)


def test_padding_ignored_and_gets_zero_gradient() -> None:
    student, teacher, mask = make(mask_kind="holes")
    pad = mask == 0
    base = minilmv2_loss(student, teacher, mask, 4)
    s2 = [s.detach().masked_fill(pad[..., None], 50.0).requires_grad_() for s in student]
    t2 = [t.masked_fill(pad[..., None], -50.0) for t in teacher]
    again = minilmv2_loss(s2, t2, mask, 4)
    assert again.item() == pytest.approx(base.item(), rel=1e-6)
    again.backward()
    for s in s2:
        assert s.grad[pad].abs().sum() == 0 and s.grad[~pad].abs().sum() > 0


def test_fully_padded_sequence_and_all_padded_batch() -> None:
    student, teacher, mask = make()
    mask[1] = 0
    loss = minilmv2_loss(student, teacher, mask, 2)
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(s.grad).all() for s in student)
    zero = minilmv2_loss(student, teacher, torch.zeros_like(mask), 2)
    assert zero.item() == 0.0


def test_bf16_inputs_computed_in_float32() -> None:
    student, teacher, mask = make(seed=3)
    s16 = [s.detach().bfloat16().requires_grad_() for s in student]
    t16 = [t.bfloat16() for t in teacher]
    got = minilmv2_loss(s16, t16, mask, 4, chunk_size=3)
    ref = minilmv2_loss([s.detach().float() for s in s16], [t.float() for t in t16], mask, 4)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(ref.item(), rel=1e-6)
    got.backward()
    assert all(s.grad is not None and s.grad.dtype == torch.bfloat16 for s in s16)


def test_inference_mode_teacher_gets_no_gradient() -> None:
    student, teacher, mask = make()
    ref = minilmv2_loss(student, teacher, mask, 4)
    with torch.inference_mode():
        t_inf = [t.clone() for t in teacher]
    got = minilmv2_loss(student, t_inf, mask, 4)
    got.backward()
    assert got.item() == pytest.approx(ref.item())
    assert all(s.grad is not None for s in student)
    t_req = [t.clone().requires_grad_() for t in teacher]
    minilmv2_loss(student, t_req, mask, 4).backward()
    assert all(t.grad is None for t in t_req)


def test_nothing_quadratic_is_saved_for_backward() -> None:
    """The chunked loss keeps only the inputs for backward: no B x A_r x T x T (or any T x T) tensor."""
    B, T, dS, dT = 2, 32, 8, 16
    student, teacher, mask = make(B=B, T=T, dS=dS, dT=dT)
    saved: list[int] = []

    def pack(x):
        saved.append(x.numel())
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        minilmv2_loss(student, teacher, mask, 4, chunk_size=2).backward()
    assert saved and max(saved) <= B * T * dT
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        minilmv2_loss_autograd(student, teacher, mask, 4)
    assert max(saved) >= B * 4 * T * T  # the naive version does keep the relations


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(dS=8, dT=12, A_r=3), "does not divide the student Q width 8"),
        (dict(dS=8, dT=12, A_r=8), "does not divide the teacher Q width 12"),
        (dict(dS=8, dT=12, A_r=0), "positive int"),
    ],
)
def test_relation_head_errors(kwargs, match: str) -> None:
    A_r = kwargs.pop("A_r")
    student, teacher, mask = make(**kwargs)
    with pytest.raises(ValueError, match=match):
        minilmv2_loss(student, teacher, mask, A_r)


def test_shape_errors() -> None:
    student, teacher, mask = make()
    with pytest.raises(ValueError, match=r"disagree on \[B, T\]"):
        minilmv2_loss(student, [t[:, :-1] for t in teacher], mask, 2)
    with pytest.raises(ValueError, match=r"\(Q, K, V\)"):
        minilmv2_loss(student[:2], teacher[:2], mask, 2)
    with pytest.raises(ValueError, match="attention_mask"):
        minilmv2_loss(student, teacher, mask[:, :-1], 2)
    with pytest.raises(ValueError, match="chunk_size"):
        minilmv2_loss(student, teacher, mask, 2, chunk_size=0)


def test_backend_choice() -> None:
    student, teacher, mask = make()
    with pytest.raises(ValueError, match="backend"):
        minilmv2_loss(student, teacher, mask, 2, backend="flash")
    auto = minilmv2_loss(student, teacher, mask, 2)  # CPU: auto = chunked
    assert auto.item() == minilmv2_loss(student, teacher, mask, 2, backend="chunked").item()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("backend", ["chunked", "fused"])
def test_cuda_bf16_matches_naive(backend: str) -> None:
    student, teacher, mask = make(B=4, T=64, dS=32, dT=64, seed=5)
    dev = torch.device("cuda")
    s = [x.detach().to(dev, torch.bfloat16).requires_grad_() for x in student]
    t = [x.to(dev, torch.bfloat16) for x in teacher]
    m = mask.to(dev)
    ref = minilmv2_loss_autograd(s, t, m, 8)
    ref_grads = torch.autograd.grad(ref, s)
    got = minilmv2_loss(s, t, m, 8, chunk_size=5, backend=backend)
    got_grads = torch.autograd.grad(got, s)
    assert got.dtype == torch.float32 and got.item() == pytest.approx(ref.item(), rel=1e-4)
    for g, r in zip(got_grads, ref_grads):
        torch.testing.assert_close(g.float(), r.float(), rtol=2e-2, atol=1e-4)
