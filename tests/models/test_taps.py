"""Taps capture exactly the hidden states and Q/K/V of an ordinary forward, without changing it."""

from __future__ import annotations

import copy
from unittest import mock

import pytest
import torch
from transformers import GPT2Config, GPT2Model

from pretrain_distill.models import Tap, UnsupportedArchitectureError, base_model
from pretrain_distill.models.families import detect_family, encoder_layers, qkv_modules


def test_hidden_states_and_qkv_match_reference_forward(tiny_model, batch):
    tap = Tap(tiny_model, hidden_layers=[0, 1, 2], qkv_layers=[1, 2])
    with torch.no_grad():
        out = base_model(tiny_model)(**batch, output_hidden_states=True)
    captured = tap.pop()
    assert sorted(captured.hidden) == [0, 1, 2]
    for index, reference in enumerate(out.hidden_states):
        torch.testing.assert_close(captured.hidden[index], reference, rtol=0, atol=0)
    layers = encoder_layers(tiny_model)
    for index in (1, 2):
        linears = qkv_modules(layers[index - 1], detect_family(tiny_model))
        with torch.no_grad():
            expected = [linear(out.hidden_states[index - 1]) for linear in linears]
        assert captured.qkv[index][0].shape == (2, 7, 64)
        for got, want in zip(captured.qkv[index], expected):
            torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_captures_match_an_eager_attention_forward(tiny_model, batch):
    """The SDPA forward the tap rides on gives the same states as the eager attention path."""
    eager = copy.deepcopy(tiny_model)
    eager.set_attn_implementation("eager")
    assert eager.config._attn_implementation == "eager"
    tap = Tap(tiny_model, hidden_layers=[1, 2], qkv_layers=[2])
    with torch.no_grad():
        tiny_model(**batch)
        reference = base_model(eager)(**batch, output_hidden_states=True).hidden_states
    captured = tap.pop()
    for index in (1, 2):
        torch.testing.assert_close(captured.hidden[index], reference[index])
    query = qkv_modules(encoder_layers(eager)[1], detect_family(eager))[0]
    with torch.no_grad():
        torch.testing.assert_close(captured.qkv[2][0], query(reference[1]))


def test_tap_does_not_change_outputs_and_keeps_sdpa(tiny_model, batch):
    assert tiny_model.config._attn_implementation == "sdpa"
    with torch.no_grad():
        plain = tiny_model(**batch).logits
    tap = Tap(tiny_model, hidden_layers=[0, 1, 2], qkv_layers=[1, 2])
    sdpa = torch.nn.functional.scaled_dot_product_attention
    with mock.patch("torch.nn.functional.scaled_dot_product_attention", side_effect=sdpa) as spy:
        with torch.no_grad():
            tapped = tiny_model(**batch).logits
    assert spy.call_count == 2  # one SDPA call per layer: the attention path is unchanged
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


def test_unsupported_architecture_names_modules_looked_for():
    gpt2 = GPT2Model(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50, n_positions=16))
    with pytest.raises(UnsupportedArchitectureError, match=r"GPT2Model.*encoder\.layer.*query.*q_lin"):
        Tap(gpt2, hidden_layers=[1])
