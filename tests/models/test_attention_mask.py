"""The mask handed to an encoder's forward: ``None`` without padding, transformers' own 4D mask with
padding, so that the forward never asks the device whether there is padding. Either way the hidden
states are those of the plain 2D mask."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, AutoModel

from pretrain_distill.models.attention_mask import encoder_attention_mask


def _tiny(model_type: str, attn: str):
    torch.manual_seed(0)
    kwargs = {"vocab_size": 99, "max_position_embeddings": 40}
    if model_type == "distilbert":
        kwargs |= {"dim": 32, "n_layers": 2, "n_heads": 4, "hidden_dim": 64}
    else:
        kwargs |= {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4}
        kwargs |= {"intermediate_size": 64}
    config = AutoConfig.for_model(model_type, **kwargs)
    return AutoModel.from_config(config, attn_implementation=attn).eval()


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("model_type", ["bert", "roberta", "distilbert"])
def test_prepared_mask_gives_the_2d_masks_hidden_states(model_type, attn):
    model = _tiny(model_type, attn)
    ids = torch.randint(5, 99, (3, 9))
    padded = torch.ones(3, 9, dtype=torch.long)
    padded[0, 6:], padded[2, 2:] = 0, 0
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=padded).last_hidden_state
        prepared = encoder_attention_mask(model, padded)
        assert prepared.dim() == 4  # built by transformers' helper, handed on as it is
        got = model(input_ids=ids, attention_mask=prepared).last_hidden_state
        valid = padded.bool()
        torch.testing.assert_close(got[valid], want[valid], rtol=0, atol=1e-6)
        # no padding: no mask at all is the all-ones mask
        full = model(input_ids=ids, attention_mask=torch.ones(3, 9, dtype=torch.long)).last_hidden_state
        none = model(input_ids=ids, attention_mask=encoder_attention_mask(model, None)).last_hidden_state
        torch.testing.assert_close(none, full, rtol=0, atol=1e-6)


def test_prepared_mask_reads_nothing_and_other_families_keep_the_2d_mask(monkeypatch):
    """The 2D mask's ``all()`` is what transformers would ask on the device; the prepared mask never does.
    A family outside the list (its forward builds masks its own way) gets the 2D mask unchanged."""
    model = _tiny("bert", "sdpa")
    mask = torch.ones(2, 5, dtype=torch.long)
    mask[1, 3:] = 0
    asked = []
    original = torch.Tensor.all
    monkeypatch.setattr(torch.Tensor, "all", lambda self, *a, **k: asked.append(1) or original(self, *a, **k))
    encoder_attention_mask(model, mask)
    assert asked == []
    deberta = AutoModel.from_config(
        AutoConfig.for_model(
            "deberta-v2",
            vocab_size=99,
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=4,
            intermediate_size=64,
        )
    )
    assert encoder_attention_mask(deberta, mask) is mask
