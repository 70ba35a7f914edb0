"""Learning-rate schedule (Appendix B): linear warmup over a fraction of the steps, then linear decay to 0.

A ``torch.optim.lr_scheduler.LambdaLR``: handed to DeepSpeed, which saves and restores its state (the
step counter) with every checkpoint; the shape itself is rebuilt from the config.
"""

from __future__ import annotations

import math

import torch


def warmup_steps(total_steps: int, warmup_ratio: float) -> int:
    """Number of warmup steps: ``ceil(ratio * total)``, at least 1 when the ratio is positive."""
    if not 0.0 <= warmup_ratio < 1.0:
        raise ValueError(f"train.warmup_ratio must be in [0, 1), got {warmup_ratio}")
    return max(1, math.ceil(warmup_ratio * total_steps)) if warmup_ratio > 0 else 0


def linear_warmup_decay(step: int, total_steps: int, warmup: int) -> float:
    """LR multiplier at optimizer step ``step`` (0-based): ramps to 1 over ``warmup``, then falls to 0."""
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total_steps - step) / max(1, total_steps - warmup))


def build_lr_scheduler(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_ratio: float
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup + linear decay over ``total_steps`` optimizer steps."""
    if total_steps < 1:
        raise ValueError(f"the run has {total_steps} optimizer steps; it needs at least 1")
    warmup = warmup_steps(total_steps, warmup_ratio)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: linear_warmup_decay(step, total_steps, warmup)
    )
