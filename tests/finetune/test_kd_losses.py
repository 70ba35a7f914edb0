"""Task-KD loss functions against independent (NumPy, loop) computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from finetune.kd_losses import (
    kd_logit_loss,
    layer_distance_loss,
    mean_pool,
    normalized_squared_distance,
    task_loss,
)

g = torch.Generator().manual_seed(0)


def np_softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.mark.parametrize("temperature, scale", [(1.0, True), (2.0, True), (10.0, False)])
def test_kd_logit_loss_is_kl_teacher_student(temperature, scale):
    s, t = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    p_t, p_s = np_softmax(t.numpy() / temperature), np_softmax(s.numpy() / temperature)
    kl = (p_t * (np.log(p_t) - np.log(p_s))).sum(-1).mean()
    expected = kl * temperature**2 if scale else kl
    assert kd_logit_loss(s, t, temperature, scale).item() == pytest.approx(expected, rel=1e-5)
    assert kd_logit_loss(t, t, temperature, scale).item() == pytest.approx(0.0, abs=1e-6)


def test_kd_logit_loss_regression_is_mse_and_teacher_gets_no_grad():
    s, t = (
        torch.randn(6, 1, generator=g, requires_grad=True),
        torch.randn(6, 1, generator=g, requires_grad=True),
    )
    loss = kd_logit_loss(s, t, 4.0)
    assert loss.item() == pytest.approx(((s - t) ** 2).mean().item())
    loss.backward()
    assert t.grad is None and s.grad is not None


def test_task_loss_ce_and_mse():
    logits, labels = torch.randn(4, 3, generator=g), torch.tensor([0, 2, 1, 2])
    expected = -np.log(np_softmax(logits.numpy())[np.arange(4), labels.numpy()]).mean()
    assert task_loss(logits, labels).item() == pytest.approx(expected, rel=1e-5)
    pred, gold = torch.randn(4, 1, generator=g), torch.randn(4, generator=g)
    assert task_loss(pred, gold).item() == pytest.approx(((pred[:, 0] - gold) ** 2).mean().item())


def test_normalized_squared_distance_and_layer_sum():
    a, b = torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g)
    an, bn = a.numpy(), b.numpy()
    per_row = [np.sum((an[i] / np.linalg.norm(an[i]) - bn[i] / np.linalg.norm(bn[i])) ** 2) for i in range(4)]
    assert normalized_squared_distance(a, b).item() == pytest.approx(np.mean(per_row), rel=1e-5)
    assert normalized_squared_distance(a, 3 * a).item() == pytest.approx(0.0, abs=1e-6)  # scale-free
    c, d = torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g)
    total = layer_distance_loss([a, c], [b, d]).item()
    assert total == pytest.approx(
        normalized_squared_distance(a, b).item() + normalized_squared_distance(c, d).item()
    )
    with pytest.raises(ValueError, match="matching"):
        layer_distance_loss([a], [b, d])


def test_mean_pool_over_valid_tokens():
    hidden = torch.randn(2, 5, 3, generator=g)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    pooled = mean_pool(hidden, mask)
    assert torch.allclose(pooled[0], hidden[0, :3].mean(0)) and torch.allclose(pooled[1], hidden[1].mean(0))
