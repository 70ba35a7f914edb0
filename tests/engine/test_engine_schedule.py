"""Linear warmup then linear decay, and its state surviving a save/restore."""

from __future__ import annotations

import pytest
import torch

from pretrain_distill.core.lr_schedule import build_lr_scheduler, warmup_steps


def _lrs(total: int, ratio: float, steps: int, peak: float = 1.0):
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=peak)
    sched = build_lr_scheduler(opt, total, ratio)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out, opt, sched


def test_warmup_steps():
    assert warmup_steps(1000, 0.05) == 50
    assert warmup_steps(10, 0.05) == 1
    assert warmup_steps(10, 0.0) == 0
    with pytest.raises(ValueError):
        warmup_steps(10, 1.0)


def test_shape_peaks_then_decays_to_zero():
    lrs, _, _ = _lrs(total=20, ratio=0.2, steps=20, peak=5e-4)
    assert lrs[:4] == pytest.approx([5e-4 * k / 4 for k in range(1, 5)])  # 4 warmup steps
    assert max(lrs) == pytest.approx(5e-4) and lrs.index(max(lrs)) == 3
    assert lrs[4] == pytest.approx(5e-4)  # first decay step starts at the peak
    assert all(a > b for a, b in zip(lrs[4:], lrs[5:]))
    assert lrs[-1] == pytest.approx(5e-4 / 16)  # last step: one step of 16 decay steps left


def test_state_restores_position():
    _, opt, sched = _lrs(total=20, ratio=0.2, steps=7)
    state = sched.state_dict()
    opt2 = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched2 = build_lr_scheduler(opt2, 20, 0.2)
    sched2.load_state_dict(state)
    opt2.param_groups[0]["lr"] = sched2.get_last_lr()[0]
    assert opt2.param_groups[0]["lr"] == pytest.approx(opt.param_groups[0]["lr"])
    sched.step()
    sched2.step()
    assert sched2.get_last_lr() == pytest.approx(sched.get_last_lr())


def test_zero_steps_is_an_error():
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(ValueError, match="at least 1"):
        build_lr_scheduler(opt, 0, 0.05)
