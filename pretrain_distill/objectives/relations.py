"""MiniLMv2 self-attention relation distillation (arXiv 2310.08797 eqs. 7-9; Wang et al. 2021).

For alpha in {Q, K, V}: the ``[B, T, d]`` concatenated heads are re-split into ``A_r`` relation heads of
width ``d_r = d / A_r`` (teacher and student separately), ``R_a = softmax(A_a A_a^T / sqrt(d_r))`` over the
valid keys, and the loss is ``sum_alpha mean_{b, a, valid rows t} KL(R^T_{alpha,a}[t] || R^S_{alpha,a}[t])``.

Memory. The relations are ``B * A_r * T^2`` per alpha (for B=128, T=256, A_r=48: 1.6 GB in float32 per
matrix, and autograd would keep several per alpha). :func:`minilmv2_loss` never materialises them: a
custom ``autograd.Function`` walks over chunks of (batch x relation head) slices, computes the chunk's
relations in float32, accumulates the loss and frees them. Nothing T x T is saved for backward; the backward
recomputes each chunk's relations and applies the closed-form gradient

    dL/ds_{t,k} = w_t * (R^S_{t,k} - R^T_{t,k}),   s = A A^T / sqrt(d_r)  =>  dL/dA = (G + G^T) A / sqrt(d_r)

with ``w_t = 1 / (A_r * N_valid)`` on valid rows and 0 on padded rows. This is what
``torch.utils.checkpoint`` per chunk would do, minus the autograd graph: peak extra memory is a few
chunk-sized T x T buffers, independent of B and A_r (see ``benchmarks/relation_loss_memory.py``).
The backward is first-order only (no double backward).

On CUDA the same quantity comes from fused Triton kernels (:mod:`relations_triton`), which keep every
``T x T`` tile on chip: the chunked version above is bound by memory traffic over its float32 chunks
(several passes per chunk), the kernels by arithmetic. ``backend=`` chooses; "auto" takes the kernels on
CUDA when Triton is installed, the chunked version otherwise.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor

from pretrain_distill.objectives.losses import MASK_VALUE, upcast

DEFAULT_CHUNK_ELEMENTS = 1 << 24
"""Default budget: a chunk holds at most this many relation entries (``slices * T * T``; 64 MiB fp32)."""


def _split_heads(x: Tensor, b0: int, b1: int, h0: int, h1: int, num_heads: int, dtype: torch.dtype) -> Tensor:
    """Rows ``b0:b1``, relation heads ``h0:h1`` of ``x [B, T, d]`` as ``[b, h, T, d_r]`` in ``dtype``."""
    B, T, d = x.shape
    d_r = d // num_heads
    part = x[b0:b1, :, h0 * d_r : h1 * d_r]
    return part.reshape(b1 - b0, T, h1 - h0, d_r).transpose(1, 2).to(dtype)


def _log_relations(heads: Tensor, key_valid: Tensor) -> Tensor:
    """``log_softmax(A A^T / sqrt(d_r))`` over the valid keys, float32 ``[b, h, T, T]`` (eqs. 8-9)."""
    scale = 1.0 / math.sqrt(heads.shape[-1])
    scores = torch.matmul(heads, heads.transpose(-1, -2)).mul_(scale)
    scores.masked_fill_(~key_valid[:, None, None, :], MASK_VALUE)
    return torch.log_softmax(scores, dim=-1)


def _chunks(batch: int, num_heads: int, chunk_slices: int) -> Iterator[tuple[int, int, int, int]]:
    """Cover the (batch x head) grid with rectangles of at most ``chunk_slices`` slices."""
    if chunk_slices >= num_heads:
        step_b = max(1, chunk_slices // num_heads)
        for b0 in range(0, batch, step_b):
            yield b0, min(batch, b0 + step_b), 0, num_heads
    else:
        for b0 in range(batch):
            for h0 in range(0, num_heads, chunk_slices):
                yield b0, b0 + 1, h0, min(num_heads, h0 + chunk_slices)


class _RelationKL(torch.autograd.Function):
    """``sum_{b, a, t} w[b, t] * KL(R^T[b, a, t] || R^S[b, a, t])`` with chunked forward and backward."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx,
        student: Tensor,
        teacher: Tensor,
        key_valid: Tensor,
        row_weight: Tensor,
        num_heads: int,
        chunk_slices: int,
    ) -> Tensor:
        B = student.shape[0]
        dtype = row_weight.dtype  # the compute dtype: float32 (float64 for float64 students)
        total = torch.zeros((), dtype=dtype, device=student.device)
        for b0, b1, h0, h1 in _chunks(B, num_heads, chunk_slices):
            kv = key_valid[b0:b1]
            log_s = _log_relations(_split_heads(student, b0, b1, h0, h1, num_heads, dtype), kv)
            log_t = _log_relations(_split_heads(teacher, b0, b1, h0, h1, num_heads, dtype), kv)
            p_t = log_t.exp()
            kl = log_t.sub_(log_s).mul_(p_t)  # in place on our own buffers
            kl.masked_fill_(~kv[:, None, None, :], 0.0)
            total += (kl.sum(-1) * row_weight[b0:b1, None, :]).sum()
            del log_s, log_t, p_t, kl
        ctx.save_for_backward(student, key_valid, row_weight)
        # The teacher needs no gradient and may be an inference tensor, which save_for_backward refuses.
        ctx.teacher = teacher
        ctx.num_heads = num_heads
        ctx.chunk_slices = chunk_slices
        return total

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        student, key_valid, row_weight = ctx.saved_tensors
        teacher = ctx.teacher
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None, None
        num_heads = ctx.num_heads
        B, T, d = student.shape
        d_r = d // num_heads
        scale = 1.0 / math.sqrt(d_r)
        dtype = row_weight.dtype
        grad = torch.empty(B, T, num_heads, d_r, dtype=dtype, device=student.device)
        for b0, b1, h0, h1 in _chunks(B, num_heads, ctx.chunk_slices):
            kv = key_valid[b0:b1]
            x = _split_heads(student, b0, b1, h0, h1, num_heads, dtype)
            g = _log_relations(x, kv).exp_()  # R^S
            g.sub_(
                _log_relations(_split_heads(teacher, b0, b1, h0, h1, num_heads, dtype), kv).exp_()
            )  # R^S - R^T
            g.mul_(row_weight[b0:b1, None, :, None])
            # (G + G^T) A without materialising G + G^T: two thin matmuls (d_r is small)
            gx = torch.matmul(g, x).add_(torch.matmul(g.transpose(-1, -2), x)).mul_(scale)  # [b, h, T, d_r]
            grad[b0:b1, :, h0:h1, :] = gx.transpose(1, 2)
            del x, g, gx
        grad = grad.view(B, T, d).mul_(grad_out.to(grad.dtype)).to(student.dtype)
        return grad, None, None, None, None, None


def _check_inputs(
    student_qkv: Sequence[Tensor], teacher_qkv: Sequence[Tensor], num_relation_heads: int
) -> tuple[int, int]:
    if len(student_qkv) != 3 or len(teacher_qkv) != 3:
        raise ValueError(
            f"minilmv2_loss: expected (Q, K, V) triples, got {len(student_qkv)} and {len(teacher_qkv)}"
        )
    if (
        isinstance(num_relation_heads, bool)
        or not isinstance(num_relation_heads, int)
        or num_relation_heads < 1
    ):
        raise ValueError(f"num_relation_heads must be a positive int, got {num_relation_heads!r}")
    for name, s, t in zip("QKV", student_qkv, teacher_qkv):
        if s.dim() != 3 or t.dim() != 3:
            raise ValueError(
                f"minilmv2_loss ({name}): expected [B, T, d], got {tuple(s.shape)} and {tuple(t.shape)}"
            )
        if s.shape[:2] != t.shape[:2]:
            raise ValueError(
                f"minilmv2_loss ({name}): student and teacher disagree on [B, T]: "
                f"{tuple(s.shape[:2])} vs {tuple(t.shape[:2])}"
            )
        for who, width in (("student", s.shape[-1]), ("teacher", t.shape[-1])):
            if width % num_relation_heads:
                raise ValueError(
                    f"minilmv2_loss: num_relation_heads={num_relation_heads} does not divide the {who} "
                    f"{name} width {width}; A_r must divide both d_S and d_T"
                )
    return int(student_qkv[0].shape[0]), int(student_qkv[0].shape[1])


def _row_weights(
    attention_mask: Tensor | None, B: int, T: int, A_r: int, device: torch.device, dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    """``valid [B, T]`` bool and the row weights ``valid / (A_r * N_valid)`` (no host sync)."""
    if attention_mask is None:
        valid = torch.ones(B, T, dtype=torch.bool, device=device)
    else:
        if attention_mask.shape != (B, T):
            raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}, expected ({B}, {T})")
        valid = attention_mask.to(device) != 0
    n_valid = valid.sum().clamp_min(1).to(dtype)
    return valid, valid.to(dtype) / (A_r * n_valid)


BACKENDS = ("auto", "fused", "chunked")


def _resolve_backend(backend: str, x: Tensor) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend != "auto":
        return backend
    if not x.is_cuda or x.dtype == torch.float64:
        return "chunked"
    return "fused" if importlib.util.find_spec("triton") is not None else "chunked"


def minilmv2_loss(
    student_qkv: Sequence[Tensor],
    teacher_qkv: Sequence[Tensor],
    attention_mask: Tensor | None,
    num_relation_heads: int,
    *,
    chunk_size: int | None = None,
    backend: str = "auto",
) -> Tensor:
    """MiniLMv2, eqs. 7-9: ``sum_{alpha in Q,K,V} KL(R^T_alpha || R^S_alpha)``.

    Args:
        student_qkv / teacher_qkv: ``(Q, K, V)`` tuples of ``[B, T, d_S]`` / ``[B, T, d_T]`` tensors (all heads
            concatenated, as the Q/K/V projections output them). Any float dtype; computed in float32.
        attention_mask: ``[B, T]``; padded keys get probability 0 in both relations, padded query rows are
            ignored. ``None`` = all valid.
        num_relation_heads: ``A_r``; must divide both widths (relation head widths ``d_r`` may differ).
        chunk_size: number of (batch x relation head) ``T x T`` slices processed at once; default
            ``max(1, 2**24 // T**2)``. Any value gives the same result (up to float rounding).
        backend: "fused" (Triton kernels; CUDA, or CPU under ``TRITON_INTERPRET=1``), "chunked" (PyTorch,
            any device and dtype) or "auto" (fused on CUDA when Triton is installed, else chunked).

    Each KL term is averaged over batch, relation heads and valid query rows (``1 / (A_r * N_valid)``; eq. 7
    literally sums over heads, which only rescales by ``A_r``); KL instead of the paper's CE (same gradient,
    0 for a perfect student). Gradients flow to the student's Q/K/V only.
    """
    B, T = _check_inputs(student_qkv, teacher_qkv, num_relation_heads)
    device = student_qkv[0].device
    dtype = upcast(student_qkv[0][:0]).dtype
    valid, weight = _row_weights(attention_mask, B, T, num_relation_heads, device, dtype)
    if chunk_size is None:
        chunk_size = max(1, DEFAULT_CHUNK_ELEMENTS // (T * T))
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if _resolve_backend(backend, student_qkv[0]) == "fused":
        # triton is an optional, heavy dependency (CUDA wheels bring it): loaded when the kernels run.
        from pretrain_distill.objectives.relations_triton import FusedRelationKL

        def relation_kl(s: Tensor, t: Tensor) -> Tensor:
            return FusedRelationKL.apply(s, t, valid, weight, num_relation_heads)
    else:

        def relation_kl(s: Tensor, t: Tensor) -> Tensor:
            return _RelationKL.apply(s, t, valid, weight, num_relation_heads, int(chunk_size))

    total: Tensor | None = None
    for s, t in zip(student_qkv, teacher_qkv):
        term = relation_kl(s, t.detach().to(device))
        total = term if total is None else total + term
    assert total is not None
    return total
