"""HS (eq. 6), OD (eq. 5), DirectMiniLM (eqs. 10-11), cosine and MLM losses against independent
straightforward implementations (python loops, float64) on random tensors with padding, plus invariants,
hand-computed cases, gradient routing and inference-mode teachers."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pretrain_distill.objectives import (
    DirectMiniLMMaps,
    HiddenStateProjections,
    cosine_hidden_loss,
    direct_minilm_loss,
    hidden_state_loss,
    layer_mapping,
    mlm_loss,
    output_distribution_loss,
    projection_key,
    reachable_mapping,
)


def padded_mask(B: int = 3, T: int = 7) -> torch.Tensor:
    """Row 0 full, row 1 with 2 pad tokens, row 2 with only 2 valid tokens."""
    m = torch.ones(B, T, dtype=torch.long)
    m[1, T - 2 :] = 0
    if B > 2:
        m[2, 2:] = 0
    return m


def valid_positions(mask: torch.Tensor):
    return [(b, t) for b in range(mask.shape[0]) for t in range(mask.shape[1]) if mask[b, t]]


# ------------------------------------------------------------------------------------------------ HS


def hs_reference(student_states, teacher_states, mapping, projections, mask) -> float:
    """Eq. 6 with explicit loops in float64: sum over pairs of mean over (valid token, teacher dim)."""
    total = 0.0
    pos = valid_positions(mask)
    for i, layers in enumerate(mapping, start=1):
        for j in layers:
            lin = projections[(i, j)]
            W = lin.weight.detach().double()  # [d_T, d_S]
            bias = (
                lin.bias.detach().double()
                if lin.bias is not None
                else torch.zeros(W.shape[0], dtype=torch.float64)
            )
            d_T = W.shape[0]
            sq = 0.0
            for b, t in pos:
                h = student_states[i][b, t].detach().double()
                target = teacher_states[j][b, t].double()
                for e in range(d_T):
                    pred = float(sum(h[c] * W[e, c] for c in range(W.shape[1])) + bias[e])
                    sq += (pred - float(target[e])) ** 2
            total += sq / (len(pos) * d_T)
    return total


@pytest.fixture
def hs_setup():
    torch.manual_seed(0)
    B, T, dS, dT, LS, LT = 3, 7, 4, 6, 3, 6
    mask = padded_mask(B, T)
    student = tuple(torch.randn(B, T, dS, requires_grad=True) for _ in range(LS + 1))
    teacher = tuple(torch.randn(B, T, dT) for _ in range(LT + 1))
    mapping = layer_mapping("uniform_last", LT, LS)  # [(2, 4), (4, 5), (6,)]
    proj = HiddenStateProjections(mapping, dS, dT)
    return student, teacher, mapping, proj, mask


def test_hs_matches_loop_reference(hs_setup) -> None:
    student, teacher, mapping, proj, mask = hs_setup
    got = hidden_state_loss(student, teacher, mapping, proj, mask)
    assert got.dtype == torch.float32 and got.dim() == 0
    assert got.item() == pytest.approx(hs_reference(student, teacher, mapping, proj, mask), rel=1e-5)


def test_hs_maps_are_eq6_linear_by_default_affine_by_option(hs_setup) -> None:
    student, teacher, mapping, proj, mask = hs_setup
    assert all(proj[pair].bias is None for pair in proj)  # eq. 6: H^S W, no bias
    affine = HiddenStateProjections(mapping, 4, 6, bias=True)
    assert all(affine[pair].bias is not None for pair in affine)
    got = hidden_state_loss(student, teacher, mapping, affine, mask)
    assert got.item() == pytest.approx(hs_reference(student, teacher, mapping, affine, mask), rel=1e-5)


def test_hs_dict_states_and_plain_dict_projections(hs_setup) -> None:
    student, teacher, mapping, proj, mask = hs_setup
    full = hidden_state_loss(student, teacher, mapping, proj, mask)
    s_dict = {i: student[i] for i in (1, 2, 3)}  # only the captured layers
    t_dict = {j: teacher[j] for j in (2, 4, 5, 6)}
    plain = {pair: proj[pair] for pair in proj}
    assert hidden_state_loss(s_dict, t_dict, mapping, plain, mask).item() == pytest.approx(
        full.item(), rel=1e-6
    )
    module_dict = nn.ModuleDict({projection_key(i, j): proj[(i, j)] for i, j in proj})
    got = hidden_state_loss(student, teacher, mapping, module_dict, mask)
    assert got.item() == pytest.approx(full.item())
    with pytest.raises(KeyError, match="teacher hidden state for layer 6"):
        hidden_state_loss(s_dict, {2: teacher[2], 4: teacher[4], 5: teacher[5]}, mapping, proj, mask)
    with pytest.raises(KeyError, match=r"no projection for pair \(student 3, teacher 6\)"):
        hidden_state_loss(student, teacher, mapping, {k: v for k, v in plain.items() if k != (3, 6)}, mask)


def test_hs_padding_is_ignored_and_gets_no_gradient(hs_setup) -> None:
    student, teacher, mapping, proj, mask = hs_setup
    base = hidden_state_loss(student, teacher, mapping, proj, mask)
    pad = mask == 0
    teacher2 = tuple(t.masked_fill(pad[..., None], 1e3) for t in teacher)
    student2 = tuple(s.detach().masked_fill(pad[..., None], -1e3).requires_grad_() for s in student)
    again = hidden_state_loss(student2, teacher2, mapping, proj, mask)
    assert again.item() == pytest.approx(base.item(), rel=1e-6)
    again.backward()
    for i in (1, 2, 3):
        assert student2[i].grad[pad].abs().sum() == 0
        assert student2[i].grad[~pad].abs().sum() > 0
    assert student2[0].grad is None  # embeddings not mapped


def test_hs_zero_for_copy_and_identity_maps() -> None:
    torch.manual_seed(1)
    states = tuple(torch.randn(2, 5, 8) for _ in range(7))
    mapping = layer_mapping("last", 6, 6)
    assert hidden_state_loss(states, states, mapping, None, None).item() == 0.0
    proj = HiddenStateProjections(mapping, 8, 8, bias=False)
    with torch.no_grad():
        for pair in proj:
            proj[pair].weight.copy_(torch.eye(8))
    assert hidden_state_loss(states, states, mapping, proj, padded_mask(2, 5)).item() == 0.0


def test_hs_hand_computed() -> None:
    # one valid token of width 2, identity projection: ((1-0)^2 + (2-4)^2) / 2 = 2.5; pad token ignored
    s = torch.tensor([[[1.0, 2.0], [100.0, 100.0]]])
    t = torch.tensor([[[0.0, 4.0], [0.0, 0.0]]])
    mask = torch.tensor([[1, 0]])
    got = hidden_state_loss({1: s}, {3: t}, [(3,)], None, mask)
    assert got.item() == pytest.approx(2.5)
    # two pairs are summed
    assert hidden_state_loss({1: s}, {2: t, 3: t}, [(2, 3)], None, mask).item() == pytest.approx(5.0)


def test_hs_gradients_reach_student_and_projections_not_teacher(hs_setup) -> None:
    student, _, mapping, proj, mask = hs_setup
    teacher = tuple(torch.randn(3, 7, 6, requires_grad=True) for _ in range(7))
    hidden_state_loss(student, teacher, mapping, proj, mask).backward()
    assert all(student[i].grad is not None for i in (1, 2, 3))
    assert all(t.grad is None for t in teacher)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in proj.parameters())


def test_hs_inference_mode_teacher_and_bf16(hs_setup) -> None:
    student, teacher, mapping, proj, mask = hs_setup
    with torch.inference_mode():
        teacher_inf = tuple(t.clone() for t in teacher)
    ref = hidden_state_loss(student, teacher, mapping, proj, mask)
    got = hidden_state_loss(student, teacher_inf, mapping, proj, mask)
    got.backward()
    assert got.item() == pytest.approx(ref.item())
    bf = hidden_state_loss(student, tuple(t.bfloat16() for t in teacher), mapping, proj, mask)
    assert bf.dtype == torch.float32 and bf.item() == pytest.approx(ref.item(), rel=1e-2)


def test_hs_errors_and_empty_mapping() -> None:
    s = (torch.randn(2, 4, 3), torch.randn(2, 4, 3))
    t = (torch.randn(2, 4, 5), torch.randn(2, 4, 5))
    with pytest.raises(ValueError, match="widths differ"):
        hidden_state_loss(s, t, [(1,)], None, None)
    with pytest.raises(ValueError, match=r"disagree on \[B, T\]"):
        hidden_state_loss(s, (t[0], torch.randn(2, 5, 5)), [(1,)], None, None)
    with pytest.raises(ValueError, match="attention_mask"):
        hidden_state_loss(s, t, [(1,)], HiddenStateProjections([(1,)], 3, 5), torch.ones(2, 5))
    zero = hidden_state_loss(s, t, [()], None, None)
    assert zero.item() == 0.0


def test_hidden_state_projections_keys_and_random_coverage() -> None:
    proj = HiddenStateProjections(layer_mapping("uniform_last", 12, 6), 384, 768)
    assert len(proj) == 11 and (1, 7) in proj and (1, 8) not in proj
    assert isinstance(proj[(1, 7)], nn.Linear) and proj[(1, 7)].weight.shape == (768, 384)
    assert projection_key(1, 7) == "1_7" and "maps.1_7.weight" in proj.state_dict()
    with pytest.raises(KeyError, match="no projection"):
        proj[(1, 8)]
    rand = HiddenStateProjections(reachable_mapping("random", 12, 6), 8, 16)
    assert len(rand) == 6 * 7
    for seed in range(30):
        m = layer_mapping("random", 12, 6, generator=torch.Generator().manual_seed(seed))
        assert all(pair in rand for i, js in enumerate(m, 1) for pair in [(i, j) for j in js])


# ------------------------------------------------------------------------------------------------ OD


def od_reference(zs: torch.Tensor, zt: torch.Tensor, T: float, positions) -> float:
    """T^2 * mean over positions of sum_v p_T (log p_T - log p_S), loops in float64."""
    total = 0.0
    for pos in positions:
        a = zs[pos].detach().double() / T
        c = zt[pos].double() / T
        la = a - torch.logsumexp(a, 0)
        lc = c - torch.logsumexp(c, 0)
        total += sum(float(math.exp(lc[v]) * (lc[v] - la[v])) for v in range(a.shape[0]))
    return T * T * total / len(positions)


@pytest.mark.parametrize("temperature", [1.0, 2.0, 0.5])
def test_od_matches_loop_reference_with_mask(temperature: float) -> None:
    torch.manual_seed(2)
    zs = torch.randn(3, 7, 11, requires_grad=True)
    zt = torch.randn(3, 7, 11) * 3
    mask = padded_mask(3, 7).bool()
    mask[0, 1] = False
    got = output_distribution_loss(zs, zt, temperature, mask)
    ref = od_reference(zs, zt, temperature, valid_positions(mask))
    assert got.dtype == torch.float32 and got.item() == pytest.approx(ref, rel=1e-5)
    # no mask: the caller passes the gathered positions
    gathered = output_distribution_loss(zs[mask], zt[mask], temperature)
    assert gathered.item() == pytest.approx(ref, rel=1e-5)


def test_od_is_t2_times_cross_entropy_minus_entropy() -> None:
    torch.manual_seed(3)
    zs, zt, T = torch.randn(10, 9), torch.randn(10, 9), 2.0
    pt = F.softmax(zt.double() / T, -1)
    ce = -(pt * F.log_softmax(zs.double() / T, -1)).sum(-1).mean()
    ent = -(pt * pt.log()).sum(-1).mean()
    got = output_distribution_loss(zs, zt, T)
    assert got.item() == pytest.approx((T * T * (ce - ent)).item(), rel=1e-5)
    # same gradient as the paper's T^2 * CE
    zs1 = zs.double().requires_grad_()
    (T * T * -(pt * F.log_softmax(zs1 / T, -1)).sum(-1).mean()).backward()
    zs2 = zs.double().requires_grad_()
    output_distribution_loss(zs2, zt.double(), T).backward()
    torch.testing.assert_close(zs2.grad, zs1.grad)


@pytest.mark.parametrize("chunk_rows", [1, 4, 10, 64])
def test_od_chunks_give_the_autograd_value_and_gradient(chunk_rows: int) -> None:
    """Any row chunk: the value and the closed-form gradient of the plain autograd formula (float64)."""
    torch.manual_seed(5)
    zs = (torch.randn(10, 17, dtype=torch.float64) * 2).requires_grad_()
    zt, T = torch.randn(10, 17, dtype=torch.float64) * 3, 1.7
    ref = (
        T
        * T
        * F.kl_div(F.log_softmax(zs / T, -1), F.log_softmax(zt / T, -1), reduction="sum", log_target=True)
        / 10
    )
    (ref_grad,) = torch.autograd.grad(ref, zs)
    got = output_distribution_loss(zs, zt, T, chunk_rows=chunk_rows)
    (grad,) = torch.autograd.grad(got * 3.0, zs)  # a scaled upstream gradient
    torch.testing.assert_close(got, ref)
    torch.testing.assert_close(grad, 3.0 * ref_grad)
    assert torch.autograd.gradcheck(lambda z: output_distribution_loss(z, zt, T, chunk_rows=3), (zs,))


def test_od_bf16_logits_and_inference_mode_teacher() -> None:
    torch.manual_seed(6)
    zs = torch.randn(2, 6, 50).bfloat16().requires_grad_()
    with torch.inference_mode():
        zt = torch.randn(2, 6, 50).bfloat16()
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[1, 4:] = False
    got = output_distribution_loss(zs, zt, 1.0, mask, chunk_rows=3)
    (grad,) = torch.autograd.grad(got, zs)
    zs32 = zs.detach().float().requires_grad_()
    ref = output_distribution_loss(zs32, zt.float(), 1.0, mask, chunk_rows=100)
    (ref_grad,) = torch.autograd.grad(ref, zs32)
    assert got.dtype == torch.float32 and got.item() == pytest.approx(ref.item(), rel=1e-5)
    assert grad.dtype == torch.bfloat16 and (grad[1, 4:] == 0).all()
    torch.testing.assert_close(grad.float(), ref_grad, rtol=2e-2, atol=1e-4)


def test_od_equals_distilbert_kldiv_batchmean() -> None:
    torch.manual_seed(4)
    zs, zt, T = torch.randn(6, 13), torch.randn(6, 13), 2.0
    ref = nn.KLDivLoss(reduction="batchmean")(F.log_softmax(zs / T, -1), F.softmax(zt / T, -1)) * T**2
    assert output_distribution_loss(zs, zt, T).item() == pytest.approx(ref.item(), rel=1e-5)


def test_od_zero_for_equal_logits_and_hand_case() -> None:
    z = torch.randn(4, 5, 7)
    assert output_distribution_loss(z, z.clone(), 3.0).item() == pytest.approx(0.0, abs=1e-6)
    # p_T = (1/2, 1/2), p_S = (1/4, 3/4): KL = 1/2 ln 2 + 1/2 ln(2/3)
    zs = torch.tensor([[0.0, math.log(3.0)]])
    zt = torch.tensor([[0.0, 0.0]])
    expect = 0.5 * math.log(2.0) + 0.5 * math.log(2.0 / 3.0)
    assert output_distribution_loss(zs, zt).item() == pytest.approx(expect, rel=1e-6)


def test_od_bf16_computed_in_float32_and_gradients() -> None:
    torch.manual_seed(5)
    zs = (torch.randn(2, 5, 50) * 4).bfloat16().requires_grad_()
    with torch.inference_mode():
        zt = (torch.randn(2, 5, 50) * 4).bfloat16()
    got = output_distribution_loss(zs, zt, 1.0, torch.ones(2, 5, dtype=torch.bool))
    assert got.dtype == torch.float32
    ref = output_distribution_loss(zs.detach().float(), zt.float().clone())
    assert got.item() == pytest.approx(ref.item(), rel=1e-6)
    got.backward()
    assert zs.grad is not None and zs.grad.dtype == torch.bfloat16


def test_od_empty_selection_and_errors() -> None:
    zs = torch.randn(2, 3, 4, requires_grad=True)
    zero = output_distribution_loss(zs, torch.randn(2, 3, 4), 1.0, torch.zeros(2, 3, dtype=torch.bool))
    assert zero.item() == 0.0
    zero.backward()
    assert zs.grad is not None and zs.grad.abs().sum() == 0
    with pytest.raises(ValueError, match="shapes differ"):
        output_distribution_loss(zs, torch.randn(2, 3, 5))
    with pytest.raises(ValueError, match="mask shape"):
        output_distribution_loss(zs, torch.randn(2, 3, 4), 1.0, torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="temperature"):
        output_distribution_loss(zs, torch.randn(2, 3, 4), 0.0)


# -------------------------------------------------------------------------------------- DirectMiniLM


def direct_reference(student_qkv, teacher_qkv, mask, weights) -> float:
    """Eq. 10 with loops: sum over alpha, mean over (valid token, relation head, teacher head dim);
    ``weights[alpha]`` is ``[A, d_r^S, d_r^T]`` (its own widths per alpha)."""
    pos = valid_positions(mask)
    total = 0.0
    for alpha in range(3):
        A, dsr, dtr = weights[alpha].shape
        sq = 0.0
        for b, t in pos:
            for a in range(A):
                xs = student_qkv[alpha][b, t, a * dsr : (a + 1) * dsr].detach().double()
                xt = teacher_qkv[alpha][b, t, a * dtr : (a + 1) * dtr].double()
                W = weights[alpha][a].detach().double()
                for e in range(dtr):
                    pred = sum(float(xs[c] * W[c, e]) for c in range(dsr))
                    sq += (pred - float(xt[e])) ** 2
        total += sq / (len(pos) * A * dtr)
    return total


def test_direct_minilm_matches_loop_reference() -> None:
    torch.manual_seed(6)
    B, T, A, dS, dT = 3, 7, 2, 6, 8
    maps = DirectMiniLMMaps(A, dS, dT)
    assert [tuple(w.shape) for w in maps.weights] == [(A, 3, 4)] * 3
    s = [torch.randn(B, T, dS, requires_grad=True) for _ in range(3)]
    t = [torch.randn(B, T, dT) for _ in range(3)]
    mask = padded_mask(B, T)
    got = direct_minilm_loss(s, t, mask, maps)
    assert got.item() == pytest.approx(direct_reference(s, t, mask, maps.weights), rel=1e-5)
    got.backward()
    assert all(w.grad is not None for w in maps.weights) and all(x.grad is not None for x in s)
    pad = mask == 0
    assert all(x.grad[pad].abs().sum() == 0 for x in s)


def test_direct_minilm_with_grouped_kv_widths_matches_loop_reference() -> None:
    """Grouped-query attention: K and V are narrower than Q (here 2 heads x 3 of 6, and 4 of 8)."""
    torch.manual_seed(10)
    maps = DirectMiniLMMaps(2, (8, 4, 4), (12, 6, 6))
    assert [tuple(w.shape) for w in maps.weights] == [(2, 4, 6), (2, 2, 3), (2, 2, 3)]
    s = [torch.randn(2, 5, d, requires_grad=True) for d in (8, 4, 4)]
    t = [torch.randn(2, 5, d) for d in (12, 6, 6)]
    mask = padded_mask(2, 5)
    got = direct_minilm_loss(s, t, mask, maps)
    assert got.item() == pytest.approx(direct_reference(s, t, mask, maps.weights), rel=1e-5)
    with pytest.raises(ValueError, match="maps are for K widths 4->6"):
        direct_minilm_loss([s[0], s[0], s[2]], t, mask, maps)
    with pytest.raises(ValueError, match="must divide the student width 3"):
        DirectMiniLMMaps(2, (8, 3, 3), 12)


def test_direct_minilm_maps_forward_is_per_head_matmul() -> None:
    torch.manual_seed(7)
    maps = DirectMiniLMMaps(3, 6, 9)
    x = torch.randn(4, 6)
    out = maps(1, x)
    blocks = [x[:, 2 * a : 2 * a + 2] @ maps.weights[1][a] for a in range(3)]
    torch.testing.assert_close(out, torch.cat(blocks, -1))


def test_direct_minilm_zero_for_identity_maps_and_copy_and_inference_teacher() -> None:
    maps = DirectMiniLMMaps(4, 8, 8)
    with torch.no_grad():
        for weight in maps.weights:
            weight.copy_(torch.eye(2).expand(4, 2, 2))
    qkv = [torch.randn(2, 5, 8) for _ in range(3)]
    assert direct_minilm_loss(qkv, qkv, padded_mask(2, 5), maps).item() == 0.0
    with torch.inference_mode():
        teacher = [torch.randn(2, 5, 8) for _ in range(3)]
    student = [torch.randn(2, 5, 8, requires_grad=True) for _ in range(3)]
    direct_minilm_loss(student, teacher, None, maps).backward()
    assert student[0].grad is not None


def test_orthogonality_penalty() -> None:
    maps = DirectMiniLMMaps(2, 4, 8)  # d_r^S = 2 <= d_r^T = 4: W W^T = I_2 is reachable
    with torch.no_grad():
        q, _ = torch.linalg.qr(torch.randn(4, 2))  # orthonormal columns
        for weight in maps.weights:
            weight.copy_(q.T.expand(2, 2, 4))
    assert maps.orthogonality_penalty().item() == pytest.approx(0.0, abs=1e-10)
    with torch.no_grad():
        for weight in maps.weights:
            weight.zero_()
    assert maps.orthogonality_penalty().item() == pytest.approx(2.0)  # ||0 - I_2||_F^2
    wide = DirectMiniLMMaps(2, 8, 4)  # d_r^S = 4 > d_r^T = 2: W^T W = I_2
    with torch.no_grad():
        for weight in wide.weights:
            weight.fill_(0.0)
    assert wide.orthogonality_penalty().item() == pytest.approx(2.0)
    maps.orthogonality_penalty().backward()


def test_direct_minilm_errors() -> None:
    with pytest.raises(ValueError, match="must divide"):
        DirectMiniLMMaps(5, 8, 10)
    maps = DirectMiniLMMaps(2, 4, 8)
    with pytest.raises(ValueError, match="widths"):
        direct_minilm_loss([torch.randn(1, 3, 6)] * 3, [torch.randn(1, 3, 8)] * 3, None, maps)
    with pytest.raises(ValueError, match=r"\(Q, K, V\)"):
        direct_minilm_loss([torch.randn(1, 3, 4)] * 2, [torch.randn(1, 3, 8)] * 2, None, maps)


# ------------------------------------------------------------------------------------ cosine and MLM


def test_cosine_matches_cosine_embedding_loss_on_valid_tokens() -> None:
    torch.manual_seed(8)
    hs = torch.randn(3, 7, 5, requires_grad=True)
    ht = torch.randn(3, 7, 5)
    mask = padded_mask(3, 7)
    sel = mask.bool()
    ref = nn.CosineEmbeddingLoss()(hs[sel], ht[sel], torch.ones(int(sel.sum())))
    got = cosine_hidden_loss(hs, ht, mask)
    assert got.item() == pytest.approx(ref.item(), rel=1e-6)
    h = hs.detach().double()
    loop = sum(
        1 - float(h[b, t] @ ht[b, t].double()) / float(h[b, t].norm() * ht[b, t].double().norm())
        for b, t in valid_positions(mask)
    ) / len(valid_positions(mask))
    assert got.item() == pytest.approx(loop, rel=1e-5)
    assert cosine_hidden_loss(ht, ht * 3.0, mask).item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="equal widths"):
        cosine_hidden_loss(hs, torch.randn(3, 7, 6), mask)


def test_mlm_loss() -> None:
    torch.manual_seed(9)
    logits = torch.randn(2, 6, 10, requires_grad=True)
    labels = torch.full((2, 6), -100)
    labels[0, 1], labels[1, 4], labels[1, 5] = 3, 7, 0
    ref = F.cross_entropy(logits.view(-1, 10), labels.view(-1), ignore_index=-100)
    got = mlm_loss(logits, labels)
    assert got.item() == pytest.approx(ref.item(), rel=1e-6)
    hand = (
        -sum(
            float(F.log_softmax(logits.detach()[b, t].double(), -1)[labels[b, t]])
            for b, t in [(0, 1), (1, 4), (1, 5)]
        )
        / 3
    )
    assert got.item() == pytest.approx(hand, rel=1e-6)
    zero = mlm_loss(logits, torch.full((2, 6), -100))
    assert zero.item() == 0.0 and not torch.isnan(zero)
    zero.backward()
    bf = mlm_loss(logits.detach().bfloat16(), labels)
    assert bf.dtype == torch.float32 and bf.item() == pytest.approx(ref.item(), rel=2e-2)


# ----------------------------------------------------------------------- all losses: gradient routing


def _all_losses(student: dict, teacher: dict, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    from pretrain_distill.objectives import minilmv2_loss

    proj = HiddenStateProjections([(1,), (2,)], 8, 12)
    maps = DirectMiniLMMaps(2, 8, 12)
    return {
        "hs": hidden_state_loss(student["hidden"], teacher["hidden"], [(1,), (2,)], proj, mask),
        "od": output_distribution_loss(student["logits"], teacher["logits"], 2.0, mask.bool()),
        "minilmv2": minilmv2_loss(student["qkv"], teacher["qkv"], mask, 4),
        "direct": direct_minilm_loss(student["qkv"], teacher["qkv"], mask, maps),
        "cosine": cosine_hidden_loss(student["hidden"][2][..., :8], teacher["hidden"][2][..., :8], mask),
    }


def _tensors(requires_grad: bool, width: int, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g).requires_grad_(requires_grad)

    return {
        "hidden": tuple(r(3, 7, width) for _ in range(3)),
        "logits": r(3, 7, 11),
        "qkv": tuple(r(3, 7, width) for _ in range(3)),
    }


@pytest.mark.parametrize("teacher_kind", ["requires_grad", "inference_mode"])
def test_every_loss_routes_gradient_to_student_only(teacher_kind: str) -> None:
    mask = padded_mask(3, 7)
    student = _tensors(True, 8, 0)
    if teacher_kind == "inference_mode":
        with torch.inference_mode():
            teacher = _tensors(False, 12, 1)
    else:
        teacher = _tensors(True, 12, 1)
    losses = _all_losses(student, teacher, mask)
    for name, value in losses.items():
        assert value.dim() == 0 and value.dtype == torch.float32 and torch.isfinite(value), name
        assert value.item() > 0, name
    sum(losses.values()).backward()
    student_leaves = [*student["hidden"][1:], student["logits"], *student["qkv"]]
    assert all(x.grad is not None and x.grad.abs().sum() > 0 for x in student_leaves)
    if teacher_kind == "requires_grad":
        teacher_leaves = [*teacher["hidden"], teacher["logits"], *teacher["qkv"]]
        assert all(x.grad is None for x in teacher_leaves)
