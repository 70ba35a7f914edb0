"""Tiny random encoders of every supported family (3 layers, 64 wide, small vocabulary), built from configs
with the family's own settings that matter to taps and students: ModernBERT's alternating sliding-window
layers (window of 4 tokens, so a 7-token batch feels it) and rotary, DeBERTa-v3's relative attention with
shared Q/K projections, EuroBERT's grouped K/V heads and rotary, ELECTRA's factorised embeddings."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, AutoModelForMaskedLM, PretrainedConfig

#: Every model type of pretrain_distill.models.families.FAMILIES (a test checks the two agree).
MODEL_TYPES = (
    "bert",
    "roberta",
    "xlm-roberta",
    "camembert",
    "xlm-roberta-xl",
    "electra",
    "distilbert",
    "modernbert",
    "deberta-v2",
    "eurobert",
    "mpnet",
)
#: Family settings beyond the shape, vocabulary and special tokens.
FAMILY_SETTINGS: dict[str, dict] = {
    "electra": {"embedding_size": 32},
    "modernbert": {"global_attn_every_n_layers": 2, "local_attention": 4},  # layers: global, sliding, global
    "deberta-v2": {
        "relative_attention": True,
        "pos_att_type": ["p2c", "c2p"],
        "share_att_key": True,
        "position_buckets": 8,
        "max_relative_positions": 32,
        "position_biased_input": False,
        "norm_rel_ebd": "layer_norm",
    },
    "eurobert": {"num_key_value_heads": 2},
}
SMALL_TOKENS = dict(
    pad_token_id=0, cls_token_id=1, sep_token_id=2, bos_token_id=1, eos_token_id=2, mask_token_id=3
)


def tiny_family_config(
    model_type: str,
    vocab_size: int = 101,
    layers: int = 3,
    heads: int = 4,
    hidden: int = 64,
    ffn: int = 96,
    positions: int = 40,
    token_ids: dict | None = None,
    **changes,
) -> PretrainedConfig:
    """A tiny config of ``model_type`` with its family settings (``changes`` override them)."""
    tokens = {
        k: v
        for k, v in (token_ids or SMALL_TOKENS).items()
        if k != "mask_token_id" or model_type == "eurobert"
    }
    if model_type == "distilbert":
        shape = dict(n_layers=layers, n_heads=heads, dim=hidden, hidden_dim=ffn)
    else:
        shape = dict(
            num_hidden_layers=layers, num_attention_heads=heads, hidden_size=hidden, intermediate_size=ffn
        )
    values = {**shape, **FAMILY_SETTINGS.get(model_type, {}), **tokens, **changes}
    return AutoConfig.for_model(
        model_type, vocab_size=vocab_size, max_position_embeddings=positions, **values
    )


def tiny_models(model_types=MODEL_TYPES, layers: int = 2) -> dict[str, torch.nn.Module]:
    """One tiny ``*ForMaskedLM`` per model type, in eval mode, with the family's preferred attention."""
    from pretrain_distill.models.families import attention_implementation, family_for_model_type

    torch.manual_seed(0)
    models = {}
    for model_type in model_types:
        attention = attention_implementation(family_for_model_type(model_type))
        config = tiny_family_config(model_type, layers=layers)
        models[model_type] = AutoModelForMaskedLM.from_config(config, attn_implementation=attention).eval()
    return models


@pytest.fixture(params=MODEL_TYPES)
def tiny_model(request) -> torch.nn.Module:
    """A tiny 2-layer ``*ForMaskedLM`` of each supported model type."""
    return tiny_models([request.param])[request.param]


@pytest.fixture(params=MODEL_TYPES)
def tiny_model3(request) -> torch.nn.Module:
    """A tiny 3-layer ``*ForMaskedLM`` of each supported model type (ModernBERT: global, sliding, global)."""
    return tiny_models([request.param], layers=3)[request.param]


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
    return tiny_models(["bert"])["bert"]
