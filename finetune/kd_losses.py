"""Task-specific distillation losses: pure functions of tensors, each citing its equation.

Batch reduction: the papers sum over the training set; we average over the batch (the usual
mini-batch estimate; it only rescales the weights).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def task_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Hard-label loss: cross-entropy (ILD-RTC ``L_hard = CE(z^s, label)``), MSE for regression."""
    if logits.shape[-1] == 1:
        return F.mse_loss(logits.squeeze(-1), labels.float())
    return F.cross_entropy(logits, labels)


def kd_logit_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float, scale_t2: bool = True
) -> torch.Tensor:
    """Soft-target loss ``KL(p^T || p^S)``, ``p = softmax(z / T)`` (Hinton et al. 2015; ILD-RTC eq. 3).

    Scaled by ``T^2`` when ``scale_t2`` (keeps gradient magnitudes comparable across T; ILD-RTC's eq. 3
    has no scale). Regression (one output): MSE between the student's and the teacher's predictions."""
    teacher_logits = teacher_logits.detach()
    if student_logits.shape[-1] == 1:
        return F.mse_loss(student_logits, teacher_logits)
    log_p_s = F.log_softmax(student_logits / temperature, dim=-1)
    p_t = F.softmax(teacher_logits / temperature, dim=-1)
    kl = F.kl_div(log_p_s, p_t, reduction="batchmean")
    return kl * temperature**2 if scale_t2 else kl


def normalized_squared_distance(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """``|| s / ||s||_2 - t / ||t||_2 ||_2^2`` per example, averaged over the batch (``[B, d]`` inputs).

    Gradients flow into both sides (RAIL-KD learns the teacher-side projection too); teacher hidden
    states themselves come from a no-grad forward."""
    s = F.normalize(student, dim=-1)
    t = F.normalize(teacher, dim=-1)
    return (s - t).pow(2).sum(-1).mean()


def layer_distance_loss(student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor]) -> torch.Tensor:
    """Sum over mapped layers of :func:`normalized_squared_distance`.

    With first-token ([CLS]) states this is PKD's ``L_PT`` and ILD-RTC eq. 1; with projected mean-pooled
    states it is RAIL-KD_l eq. 2; with one concatenated pair it is RAIL-KD_c eq. 3."""
    if len(student) != len(teacher) or not student:
        raise ValueError(f"need matching non-empty layer lists, got {len(student)} and {len(teacher)}")
    return torch.stack([normalized_squared_distance(s, t) for s, t in zip(student, teacher)]).sum()


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """RAIL-KD eq. 1: the average of a layer's token states over the valid (unpadded) tokens."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
