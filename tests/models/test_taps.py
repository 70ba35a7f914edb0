"""Taps capture exactly the hidden states and Q/K/V of an ordinary forward, without changing it."""

from __future__ import annotations

import copy
from unittest import mock

import pytest
import torch

from pretrain_distill.models import Tap, UnsupportedArchitectureError
from pretrain_distill.models.families import detect_family, encoder_layers


def test_captures_match_an_eager_attention_forward(tiny_model, batch):
    """The SDPA forward the tap rides on gives the same states and Q/K/V as the eager attention path
    (see tests/models/test_families.py for the captures against the model's own states, by hand)."""
    eager = copy.deepcopy(tiny_model)
    eager.set_attn_implementation("eager")
    assert eager.config._attn_implementation == "eager"
    tap, eager_tap = Tap(tiny_model, [1, 2], [2]), Tap(eager, [1, 2], [2])
    with torch.no_grad():
        tiny_model(**batch)
        eager(**batch)
    captured, reference = tap.pop(), eager_tap.pop()
    # Valid tokens only: a padded token whose sliding window (ModernBERT) holds no valid key has no
    # defined attention, and the two paths fill it differently; no loss reads padded tokens.
    valid = batch["attention_mask"].bool()
    for index in (1, 2):
        torch.testing.assert_close(captured.hidden[index][valid], reference.hidden[index][valid])
    for got, want in zip(captured.qkv[2], reference.qkv[2]):
        torch.testing.assert_close(got[valid], want[valid])


def test_tap_does_not_change_outputs_and_keeps_the_attention_path(tiny_model, batch):
    preferred = detect_family(tiny_model).attention[0]
    assert tiny_model.config._attn_implementation == preferred
    with torch.no_grad():
        plain = tiny_model(**batch).logits
    tap = Tap(tiny_model, hidden_layers=[0, 1, 2], qkv_layers=[1, 2])
    sdpa = torch.nn.functional.scaled_dot_product_attention
    with mock.patch("torch.nn.functional.scaled_dot_product_attention", side_effect=sdpa) as spy:
        with torch.no_grad():
            tapped = tiny_model(**batch).logits
    assert spy.call_count == (2 if preferred == "sdpa" else 0)  # one SDPA call per layer: path unchanged
    assert torch.equal(plain, tapped)
    tap.pop()


def test_only_requested_layers_are_captured(tiny_bert, batch):
    model = tiny_bert
    tap = Tap(model, hidden_layers=[2], qkv_layers=[1])
    with torch.no_grad():
        model(**batch)
    captured = tap.pop()
    assert list(captured.hidden) == [2] and list(captured.qkv) == [1]


def test_pop_releases_and_complains_when_nothing_ran(tiny_bert, batch):
    model = tiny_bert
    tap = Tap(model, hidden_layers=[1])
    with torch.no_grad():
        model(**batch)
    tap.pop()
    with pytest.raises(RuntimeError, match=r"captured nothing for layer\(s\) \[1\]"):
        tap.pop()


def test_retarget_and_remove(tiny_bert, batch):
    model = tiny_bert
    tap = Tap(model, hidden_layers=[1])
    tap.retarget(hidden_layers=[2], qkv_layers=[2])
    with torch.no_grad():
        model(**batch)
    captured = tap.pop()
    assert list(captured.hidden) == [2] and list(captured.qkv) == [2]
    tap.remove()
    assert not any(m._forward_hooks for m in model.modules())


def test_captured_student_tensors_carry_gradients(tiny_bert, batch):
    model = tiny_bert
    tap = Tap(model, hidden_layers=[1], qkv_layers=[1])
    model(**batch)
    captured = tap.pop()
    (captured.hidden[1].sum() + captured.qkv[1][1].sum()).backward()
    layers = encoder_layers(model)
    assert layers[0].attention.self.key.weight.grad is not None
    assert layers[1].attention.self.key.weight.grad is None  # layer 2 was not part of the loss


def test_out_of_range_layers_are_refused(tiny_bert):
    model = tiny_bert
    with pytest.raises(ValueError, match=r"hidden states of layer\(s\) \[3\].*layers 0\.\.2"):
        Tap(model, hidden_layers=[3])
    with pytest.raises(ValueError, match=r"Q/K/V of layer\(s\) \[0\].*layers 1\.\.2"):
        Tap(model, qkv_layers=[0])


def test_a_model_lacking_its_familys_layout_names_the_modules_looked_for(tiny_bert):
    del tiny_bert.bert.encoder.layer[0].attention.self.query
    with pytest.raises(
        UnsupportedArchitectureError, match=r"lacks the BERT layout.*encoder\.layer\[i\]\.attention"
    ):
        Tap(tiny_bert, hidden_layers=[1])
