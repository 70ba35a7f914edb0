"""The mask handed to an encoder's forward: ``None`` without padding, transformers' own 4D mask with
padding, so that the forward never asks the device whether there is padding. Either way the hidden
states are those of the plain 2D mask, for every supported family and attention implementation."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForMaskedLM

from pretrain_distill.models.attention_mask import encoder_attention_mask
from pretrain_distill.models.families import base_model, family_for_model_type

from .conftest import tiny_family_config, tiny_models


def _hidden(model, input_ids, attention_mask):
    return base_model(model)(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def test_the_prepared_mask_gives_the_2d_masks_hidden_states(tiny_model3, batch):
    """Every family (``tiny_model3`` runs over all of them, 3 layers: ModernBERT's middle one is a
    sliding-window layer of 4 tokens, which a 7-token batch feels), each with its preferred attention."""
    model, family = tiny_model3, family_for_model_type(tiny_model3.config.model_type)
    ids, padded = batch["input_ids"], batch["attention_mask"]
    with torch.no_grad():
        want = _hidden(model, ids, padded)
        prepared = encoder_attention_mask(model, padded)
        if not family.prepared_mask:
            assert prepared is padded  # the family builds its masks its own way
        elif family.sliding_window:
            assert {m.dim() for m in prepared.values()} == {4} and len(prepared) == 2  # full and sliding
        else:
            assert prepared.dim() == 4  # built by transformers' helper, handed on as it is
        got = _hidden(model, ids, prepared)
        valid = padded.bool()
        torch.testing.assert_close(got[valid], want[valid], rtol=0, atol=1e-5)
        # no padding: no mask at all is the all-ones mask
        full = _hidden(model, ids, torch.ones_like(padded))
        torch.testing.assert_close(_hidden(model, ids, encoder_attention_mask(model, None)), full)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_both_attention_implementations_take_the_prepared_mask(attention, batch):
    torch.manual_seed(0)
    model = AutoModelForMaskedLM.from_config(tiny_family_config("bert"), attn_implementation=attention).eval()
    ids, padded = batch["input_ids"], batch["attention_mask"]
    with torch.no_grad():
        want = _hidden(model, ids, padded)
        got = _hidden(model, ids, encoder_attention_mask(model, padded))
    torch.testing.assert_close(got[padded.bool()], want[padded.bool()], rtol=0, atol=1e-5)


@pytest.mark.parametrize("model_type", ["bert", "modernbert"])
def test_preparing_the_mask_reads_nothing(model_type, batch, monkeypatch):
    """The 2D mask's ``all()`` is what transformers would ask on the device; preparing never does."""
    model = tiny_models([model_type], layers=3)[model_type]
    asked = []
    original = torch.Tensor.all
    monkeypatch.setattr(torch.Tensor, "all", lambda self, *a, **k: asked.append(1) or original(self, *a, **k))
    with torch.no_grad():
        _hidden(model, batch["input_ids"], encoder_attention_mask(model, batch["attention_mask"]))
        assert asked == []
        _hidden(model, batch["input_ids"], batch["attention_mask"])
    assert asked  # (the counter works: the 2D mask's forward does ask)
