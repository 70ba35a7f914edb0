"""The MiniLMv2 relation loss written the straightforward way, as the tests' independent reference and
the memory benchmark's naive baseline: it materialises all ``B * A_r * T^2`` float32 relations per alpha
and lets autograd keep them (do not train with it at large ``B * A_r * T^2``)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from pretrain_distill.objectives.losses import MASK_VALUE, upcast
from pretrain_distill.objectives.relations import _check_inputs, _row_weights


def minilmv2_loss_autograd(
    student_qkv: Sequence[Tensor],
    teacher_qkv: Sequence[Tensor],
    attention_mask: Tensor | None,
    num_relation_heads: int,
) -> Tensor:
    """Same value as ``pretrain_distill.objectives.relations.minilmv2_loss`` (see the module docstring)."""
    B, T = _check_inputs(student_qkv, teacher_qkv, num_relation_heads)
    device = student_qkv[0].device
    dtype = upcast(student_qkv[0][:0]).dtype
    valid, weight = _row_weights(attention_mask, B, T, num_relation_heads, device, dtype)
    total = torch.zeros((), dtype=dtype, device=device)
    for s, t in zip(student_qkv, teacher_qkv):
        xs = upcast(s.reshape(B, T, num_relation_heads, -1).transpose(1, 2))
        xt = upcast(t.detach().reshape(B, T, num_relation_heads, -1).transpose(1, 2)).to(dtype)
        mask = ~valid[:, None, None, :]
        ss = (xs @ xs.transpose(-1, -2) / math.sqrt(xs.shape[-1])).masked_fill(mask, MASK_VALUE)
        st = (xt @ xt.transpose(-1, -2) / math.sqrt(xt.shape[-1])).masked_fill(mask, MASK_VALUE)
        log_s = torch.log_softmax(ss, dim=-1)
        log_t = torch.log_softmax(st, dim=-1)
        kl = (log_t.exp() * (log_t - log_s)).masked_fill(mask, 0.0).sum(-1)  # [B, A_r, T]
        total = total + (kl * weight[:, None, :]).sum()
    return total
