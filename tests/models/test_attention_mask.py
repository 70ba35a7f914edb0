"""The mask handed to an encoder's forward: ``None`` without padding, transformers' own 4D mask with
padding, so that the forward never asks the device whether there is padding. Either way the hidden
states are those of the plain 2D mask, for every supported family and attention implementation."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForMaskedLM

from pretrain_distill.models.attention_mask import encoder_attention_mask
from pretrain_distill.models.families import base_model, family_for_model_type

from .conftest import tiny_family_config


def _hidden(model, input_ids, attention_mask):
    return base_model(model)(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def test_the_prepared_mask_gives_the_2d_masks_hidden_states(tiny_model, batch):
    """Every family (``tiny_model`` runs over all of them), each with its preferred attention."""
    model_type = tiny_model.config.model_type
    ids, padded = batch["input_ids"], batch["attention_mask"]
    with torch.no_grad():
        want = _hidden(tiny_model, ids, padded)
        prepared = encoder_attention_mask(tiny_model, padded)
        if family_for_model_type(model_type).prepared_mask:
            assert prepared.dim() == 4  # built by transformers' helper, handed on as it is
        else:
            assert prepared is padded  # the family builds its masks its own way
        got = _hidden(tiny_model, ids, prepared)
        valid = padded.bool()
        torch.testing.assert_close(got[valid], want[valid], rtol=0, atol=1e-5)
        # no padding: no mask at all is the all-ones mask
        full = _hidden(tiny_model, ids, torch.ones_like(padded))
        torch.testing.assert_close(_hidden(tiny_model, ids, encoder_attention_mask(tiny_model, None)), full)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_both_attention_implementations_take_the_prepared_mask(attention, batch):
    torch.manual_seed(0)
    model = AutoModelForMaskedLM.from_config(tiny_family_config("bert"), attn_implementation=attention).eval()
    ids, padded = batch["input_ids"], batch["attention_mask"]
    with torch.no_grad():
        want = _hidden(model, ids, padded)
        got = _hidden(model, ids, encoder_attention_mask(model, padded))
    torch.testing.assert_close(got[padded.bool()], want[padded.bool()], rtol=0, atol=1e-5)


def test_preparing_the_mask_reads_nothing(tiny_bert, batch, monkeypatch):
    """The 2D mask's ``all()`` is what transformers would ask on the device; preparing never does."""
    asked = []
    original = torch.Tensor.all
    monkeypatch.setattr(torch.Tensor, "all", lambda self, *a, **k: asked.append(1) or original(self, *a, **k))
    encoder_attention_mask(tiny_bert, batch["attention_mask"])
    assert asked == []
    _hidden(tiny_bert, batch["input_ids"], batch["attention_mask"])
    assert asked  # (the counter works: the 2D mask's forward does ask)
