"""The MiniLMv2 relation KL as fused Triton kernels (GPU): flash-attention style, no ``T x T`` in memory.

Same quantity as :class:`pretrain_distill.objectives.relations._RelationKL` (eqs. 7-9): for every (batch
row b, relation head a, query t), ``w[b, t] * KL(R^T[b, a, t] || R^S[b, a, t])`` with
``R = softmax(A A^T / sqrt(d_r))`` over the valid keys. One program owns a block of query rows of one
(b, a) slice and streams the key blocks through on-chip memory, keeping online log-sum-exps of both
relations and the running ``sum_k p^T_k (s^T_k - s^S_k)``, so that

    KL_t = sum_k p^T_k (s^T_k - s^S_k) - lse^T_t + lse^S_t.

Only the per-row log-sum-exps are saved. The backward recomputes the scores block by block and applies
``G = w (R^S - R^T)``, ``dL/dA = (G + G^T) A / sqrt(d_r)`` in two passes: one over key blocks for each
query block (``G A``) and one over query blocks for each key block (``G^T A``); no atomics, so the result
is deterministic. Everything is computed in float32 (IEEE dots, no TF32), whatever the input dtype.

The chunked PyTorch version stays the CPU path and the reference; ``minilmv2_loss(backend=...)`` picks.
Triton's interpreter (``TRITON_INTERPRET=1``) runs these kernels on CPU tensors, which is how the tests
check them on a machine without a GPU.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch import Tensor

from pretrain_distill.objectives.losses import MASK_VALUE

_MASK_VALUE = tl.constexpr(MASK_VALUE)  # finite: rows without any valid key stay NaN-free


@triton.jit
def _tile(x_ptr, b, h, idx, T, stride_b, stride_t, D: tl.constexpr, DP: tl.constexpr):
    """Rows ``idx`` of relation head ``h`` of ``x[b]`` as float32 ``[len(idx), DP]`` (zero padded)."""
    cols = tl.arange(0, DP)
    ptrs = x_ptr + b * stride_b + idx[:, None] * stride_t + (h * D + cols)[None, :]
    return tl.load(ptrs, mask=(idx[:, None] < T) & (cols[None, :] < D), other=0.0).to(tl.float32)


@triton.jit
def _program_block(A, BM: tl.constexpr):
    """This program's (batch x relation head) slice ``bh = b * A + h`` and its block of ``BM`` rows."""
    bh = tl.program_id(1)
    return bh, bh // A, bh % A, tl.program_id(0) * BM + tl.arange(0, BM)


@triton.jit
def _scores(a, b, scale):
    return tl.dot(a, tl.trans(b), input_precision="ieee") * scale


@triton.jit
def _relation_kl_fwd(
    xs, xt, valid, weight, loss_rows, lse_s, lse_t,
    T, A, sbs, sts, sbt, stt, scale_s, scale_t,
    DS: tl.constexpr, DSP: tl.constexpr, DT: tl.constexpr, DTP: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr,
):  # fmt: skip
    bh, b, h, rows = _program_block(A, BM)
    s_i = _tile(xs, b, h, rows, T, sbs, sts, DS, DSP)
    t_i = _tile(xt, b, h, rows, T, sbt, stt, DT, DTP)
    m_s = tl.full([BM], _MASK_VALUE, tl.float32)
    m_t = tl.full([BM], _MASK_VALUE, tl.float32)
    l_s = tl.zeros([BM], tl.float32)
    l_t = tl.zeros([BM], tl.float32)
    acc = tl.zeros([BM], tl.float32)  # sum_k exp(s^T_k - m_t) (s^T_k - s^S_k)
    for n0 in range(0, T, BN):
        keys = n0 + tl.arange(0, BN)
        ok = (tl.load(valid + b * T + keys, mask=keys < T, other=0) != 0)[None, :]
        s = tl.where(ok, _scores(s_i, _tile(xs, b, h, keys, T, sbs, sts, DS, DSP), scale_s), _MASK_VALUE)
        t = tl.where(ok, _scores(t_i, _tile(xt, b, h, keys, T, sbt, stt, DT, DTP), scale_t), _MASK_VALUE)
        new_m_s = tl.maximum(m_s, tl.max(s, 1))
        l_s = l_s * tl.exp(m_s - new_m_s) + tl.sum(tl.exp(s - new_m_s[:, None]), 1)
        m_s = new_m_s
        new_m_t = tl.maximum(m_t, tl.max(t, 1))
        rescale = tl.exp(m_t - new_m_t)
        p = tl.exp(t - new_m_t[:, None])
        l_t = l_t * rescale + tl.sum(p, 1)
        acc = acc * rescale + tl.sum(tl.where(ok, p * (t - s), 0.0), 1)
        m_t = new_m_t
    row_lse_s = m_s + tl.log(l_s)
    row_lse_t = m_t + tl.log(l_t)
    in_range = rows < T
    w = tl.load(weight + b * T + rows, mask=in_range, other=0.0)
    kl = acc / l_t - row_lse_t + row_lse_s
    tl.store(loss_rows + bh * T + rows, tl.where(w != 0, kl * w, 0.0), mask=in_range)
    tl.store(lse_s + bh * T + rows, row_lse_s, mask=in_range)
    tl.store(lse_t + bh * T + rows, row_lse_t, mask=in_range)


@triton.jit
def _relation_grad(s_q, t_q, s_k, t_k, lse_s_q, lse_t_q, w_q, ok_k, scale_s, scale_t):
    """``G = w (R^S - R^T)`` for a [query block, key block] tile; 0 on masked keys and weightless rows."""
    s = _scores(s_q, s_k, scale_s)
    t = _scores(t_q, t_k, scale_t)
    g = (tl.exp(s - lse_s_q[:, None]) - tl.exp(t - lse_t_q[:, None])) * w_q[:, None]
    return tl.where(ok_k[None, :] & (w_q[:, None] != 0), g, 0.0)


@triton.jit
def _relation_kl_bwd(
    xs, xt, valid, weight, lse_s, lse_t, grad,
    T, A, sbs, sts, sbt, stt, sbg, stg, scale_s, scale_t,
    DS: tl.constexpr, DSP: tl.constexpr, DT: tl.constexpr, DTP: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, TRANSPOSED: tl.constexpr,
):  # fmt: skip
    """``TRANSPOSED=False``: grad[own rows] = G A over all keys. ``True``: grad[own rows] += G^T A over
    all queries (the own rows are then the keys). Unscaled by ``1 / sqrt(d_r)``."""
    bh, b, h, own = _program_block(A, BM)
    s_own = _tile(xs, b, h, own, T, sbs, sts, DS, DSP)
    t_own = _tile(xt, b, h, own, T, sbt, stt, DT, DTP)
    own_in = own < T
    if TRANSPOSED:
        ok_own = tl.load(valid + b * T + own, mask=own_in, other=0) != 0
    else:
        lse_s_own = tl.load(lse_s + bh * T + own, mask=own_in, other=0.0)
        lse_t_own = tl.load(lse_t + bh * T + own, mask=own_in, other=0.0)
        w_own = tl.load(weight + b * T + own, mask=own_in, other=0.0)
    acc = tl.zeros([BM, DSP], tl.float32)
    for n0 in range(0, T, BN):
        other = n0 + tl.arange(0, BN)
        other_in = other < T
        s_other = _tile(xs, b, h, other, T, sbs, sts, DS, DSP)
        t_other = _tile(xt, b, h, other, T, sbt, stt, DT, DTP)
        if TRANSPOSED:  # the others are queries
            g = _relation_grad(
                s_other, t_other, s_own, t_own,
                tl.load(lse_s + bh * T + other, mask=other_in, other=0.0),
                tl.load(lse_t + bh * T + other, mask=other_in, other=0.0),
                tl.load(weight + b * T + other, mask=other_in, other=0.0),
                ok_own, scale_s, scale_t,
            )  # fmt: skip
            acc += tl.dot(tl.trans(g), s_other, input_precision="ieee")
        else:  # the others are keys
            ok_other = tl.load(valid + b * T + other, mask=other_in, other=0) != 0
            g = _relation_grad(
                s_own, t_own, s_other, t_other, lse_s_own, lse_t_own, w_own, ok_other, scale_s, scale_t
            )
            acc += tl.dot(g, s_other, input_precision="ieee")
    cols = tl.arange(0, DSP)
    ptrs = grad + b * sbg + own[:, None] * stg + (h * DS + cols)[None, :]
    mask = own_in[:, None] & (cols[None, :] < DS)
    if TRANSPOSED:
        acc += tl.load(ptrs, mask=mask, other=0.0)
    tl.store(ptrs, acc, mask=mask)


def _launch_shape(T: int, d_s: int, d_t: int, num_heads: int) -> dict:
    block = min(64, max(16, triton.next_power_of_2(T)))
    ds, dt = d_s // num_heads, d_t // num_heads
    return dict(
        DS=ds,
        DSP=max(16, triton.next_power_of_2(ds)),
        DT=dt,
        DTP=max(16, triton.next_power_of_2(dt)),
        BM=block,
        BN=block,
    )


class FusedRelationKL(torch.autograd.Function):
    """``sum_{b, a, t} w[b, t] * KL(R^T[b, a, t] || R^S[b, a, t])`` for one alpha, in Triton kernels.

    Arguments as :class:`relations._RelationKL`: ``student [B, T, d_S]``, ``teacher [B, T, d_T]``,
    ``key_valid [B, T]`` bool, ``row_weight [B, T]`` float32, ``num_heads`` = A_r.
    """

    @staticmethod
    def forward(ctx, student: Tensor, teacher: Tensor, key_valid: Tensor, row_weight: Tensor, num_heads: int):  # type: ignore[override]
        xs, xt = student.contiguous(), teacher.contiguous()
        B, T, d_s = xs.shape
        valid = key_valid.contiguous().view(torch.uint8)
        weight = row_weight.to(torch.float32).contiguous()
        lse_s = torch.empty(B * num_heads, T, dtype=torch.float32, device=xs.device)
        lse_t = torch.empty_like(lse_s)
        rows = torch.empty_like(lse_s)
        shape = _launch_shape(T, d_s, xt.shape[-1], num_heads)
        grid = (triton.cdiv(T, shape["BM"]), B * num_heads)
        scale_s, scale_t = 1.0 / math.sqrt(shape["DS"]), 1.0 / math.sqrt(shape["DT"])
        _relation_kl_fwd[grid](
            xs, xt, valid, weight, rows, lse_s, lse_t,
            T, num_heads, xs.stride(0), xs.stride(1), xt.stride(0), xt.stride(1), scale_s, scale_t,
            **shape,
        )  # fmt: skip
        ctx.save_for_backward(xs, valid, weight, lse_s, lse_t)
        ctx.teacher = xt  # may be an inference tensor, which save_for_backward refuses
        ctx.num_heads, ctx.shape, ctx.scales, ctx.grid = num_heads, shape, (scale_s, scale_t), grid
        return rows.sum().to(row_weight.dtype)

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None
        xs, valid, weight, lse_s, lse_t = ctx.saved_tensors
        xt = ctx.teacher
        grad = torch.empty(xs.shape, dtype=torch.float32, device=xs.device)
        scale_s, scale_t = ctx.scales
        for transposed in (False, True):
            _relation_kl_bwd[ctx.grid](
                xs, xt, valid, weight, lse_s, lse_t, grad,
                xs.shape[1], ctx.num_heads, xs.stride(0), xs.stride(1), xt.stride(0), xt.stride(1),
                grad.stride(0), grad.stride(1), scale_s, scale_t, TRANSPOSED=transposed, **ctx.shape,
            )  # fmt: skip
        grad.mul_(grad_out.to(torch.float32) * scale_s)
        return grad.to(xs.dtype), None, None, None, None
