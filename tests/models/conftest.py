"""Tiny random encoders of each supported family (2 layers, 64 wide, small vocab)."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    BertConfig,
    BertForMaskedLM,
    DistilBertConfig,
    DistilBertForMaskedLM,
    RobertaConfig,
    RobertaForMaskedLM,
    XLMRobertaConfig,
    XLMRobertaForMaskedLM,
)

SMALL = dict(vocab_size=101, max_position_embeddings=40)


def tiny_models() -> dict[str, torch.nn.Module]:
    """One tiny ``*ForMaskedLM`` per supported family, in eval mode, SDPA attention."""
    torch.manual_seed(0)
    bert_like = dict(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96, **SMALL
    )
    models = {
        "bert": BertForMaskedLM(BertConfig(**bert_like)),
        "roberta": RobertaForMaskedLM(RobertaConfig(**bert_like, pad_token_id=1)),
        "xlm-roberta": XLMRobertaForMaskedLM(XLMRobertaConfig(**bert_like, pad_token_id=1)),
        "distilbert": DistilBertForMaskedLM(
            DistilBertConfig(dim=64, n_layers=2, n_heads=4, hidden_dim=96, **SMALL)
        ),
    }
    return {name: model.eval() for name, model in models.items()}


@pytest.fixture(params=["bert", "roberta", "xlm-roberta", "distilbert"])
def tiny_model(request) -> torch.nn.Module:
    """A tiny ``*ForMaskedLM`` of each supported family."""
    return tiny_models()[request.param]


@pytest.fixture
def batch() -> dict[str, torch.Tensor]:
    """Two sequences of 7 tokens, the second padded after 4."""
    torch.manual_seed(1)
    input_ids = torch.randint(5, 100, (2, 7))
    attention_mask = torch.ones(2, 7, dtype=torch.long)
    attention_mask[1, 4:] = 0
    return {"input_ids": input_ids, "attention_mask": attention_mask}


@pytest.fixture
def tiny_bert() -> torch.nn.Module:
    """A tiny ``BertForMaskedLM`` (2 layers, 64 wide, 4 heads)."""
    return tiny_models()["bert"]
