"""Encoder families as data: one frozen :class:`Family` entry per Hugging Face encoder architecture.

An entry says where a family keeps its Transformer layers, its embeddings, its final norm and its MLM head
chain; how Q/K/V are computed (three ``nn.Linear`` or one fused one, grouped K/V heads, rotary position
embeddings applied after the projections); which attention implementations it allows; which layers use
sliding-window attention; which config fields hold its shape and how to write a student config of any
shape. Taps, truncation, student building, init-from-teacher, export, latency and fine-tuning read these
entries; adding a family is one entry (and its tiny config in ``tests/models/conftest.py``, which every
per-family test then runs).

**Hidden state of layer L** (the same in every family, and the convention of the model's own
``output_hidden_states``): 0 is what enters the first Transformer layer (the embedding output, after
ELECTRA's ``embeddings_project``); ``1 <= i < L`` is the output of Transformer layer ``i`` (for
pre-LN families the residual stream, before any norm; DeBERTa's layer 1 after its optional
``encoder.conv``); the last layer ``L`` of the model's config is its ``last_hidden_state``: for pre-LN
families (ModernBERT, EuroBERT, XLM-R-XL) the output of layer ``L`` *through the final norm*.
"""

from __future__ import annotations

import difflib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import CONFIG_MAPPING, PretrainedConfig


class UnsupportedArchitectureError(ValueError):
    """A model whose architecture no :class:`Family` entry describes."""


BERT_SHAPE = ("num_hidden_layers", "num_attention_heads", "hidden_size", "intermediate_size")
#: Config fields a student of another family takes from the teacher: its tokenizer's ids and positions.
TOKENIZER_FIELDS = (
    "vocab_size",
    "max_position_embeddings",
    "pad_token_id",
    "bos_token_id",
    "eos_token_id",
    "cls_token_id",
    "sep_token_id",
    "mask_token_id",
)
SDPA_FIRST = ("sdpa", "eager", "flash_attention_2")
EAGER_ONLY = ("eager",)

ConfigWriter = Callable[[dict[str, Any], PretrainedConfig], None]


@dataclass(frozen=True)
class QKVLayout:
    """How one layer computes Q, K and V (all heads concatenated, ``[B, T, width]``)."""

    # Module (relative to a layer) whose forward's first argument is the token states Q/K/V project.
    holder: str
    # Three nn.Linear names (Q, K, V), or one fused nn.Linear whose output is [Q | K | V] on the last dim.
    projections: tuple[str, ...]
    # Config field holding the K/V head count (grouped-query attention); None: as many as Q heads.
    kv_heads_field: str | None = None
    # Keyword argument of the holder carrying the rotary (cos, sin) it applies to Q and K; None: no rotary.
    rotary_argument: str | None = None


@dataclass(frozen=True)
class Family:
    """One encoder family's description (module paths are relative to the base model unless said)."""

    name: str
    model_types: tuple[str, ...]  # config.model_type values; the first one builds students of the family
    layers: str  # the nn.ModuleList of Transformer layers
    embeddings: tuple[str, ...]  # hidden state 0 = the output of the first of these the model has
    qkv: QKVLayout
    mlm_head: tuple[str, ...]  # modules of the *ForMaskedLM applied in order to the final hidden states
    attention: tuple[str, ...]  # attention implementations allowed, the preferred first
    final_norm: str | None = None  # norm after the last layer (pre-LN families): part of hidden state L
    first_layer_output: str | None = None  # module whose output replaces layer 1's, when the model has it
    sliding_window: tuple[str, str] | None = None  # (config list of layer types, the sliding-window type)
    shape_fields: tuple[str, str, str, str] = BERT_SHAPE  # config fields of (layers, heads, hidden, ffn)
    write_config: ConfigWriter | None = None  # family-specific fields of a student config, in place
    # Its encoder builds the attention mask with transformers' create_bidirectional_mask (and, with
    # sliding-window layers, create_bidirectional_sliding_window_mask), which hand prepared masks on as
    # they are (models/attention_mask.py prepares them without a device read); False: its own masks.
    prepared_mask: bool = True

    @property
    def model_type(self) -> str:
        return self.model_types[0]


def _modernbert_config(values: dict[str, Any], teacher: PretrainedConfig) -> None:
    """Global attention every n-th layer counted from the top, so the last layer (the one MiniLMv2 reads by
    default) is global; for ModernBERT-base (22) and -large (28) this is their own pattern."""
    layers, every = values["num_hidden_layers"], int(values.get("global_attn_every_n_layers") or 3)
    values["global_attn_every_n_layers"] = every
    values["layer_types"] = [
        "full_attention" if (layers - 1 - i) % every == 0 else "sliding_attention" for i in range(layers)
    ]


def _eurobert_config(values: dict[str, Any], teacher: PretrainedConfig) -> None:
    """Head width from the student's shape; the teacher's K/V grouping where it divides the heads."""
    if values.get("mask_token_id") is None:  # EuroBERT's config needs an int: keep its default
        values.pop("mask_token_id", None)
    heads = values["num_attention_heads"]
    values["head_dim"] = values["hidden_size"] // heads
    t_heads, t_kv = (
        getattr(teacher, "num_attention_heads", heads),
        getattr(teacher, "num_key_value_heads", None),
    )
    group = t_heads // t_kv if t_kv else 1
    values["num_key_value_heads"] = heads // group if heads % group == 0 else heads


#: DeBERTa-v3's relative attention (its hub configs), for a DeBERTa student of a teacher of another family.
DEBERTA_V3_ATTENTION = {
    "relative_attention": True,
    "pos_att_type": ["p2c", "c2p"],
    "share_att_key": True,
    "position_buckets": 256,
    "max_relative_positions": -1,
    "position_biased_input": False,
    "norm_rel_ebd": "layer_norm",
}


def _deberta_config(values: dict[str, Any], teacher: PretrainedConfig) -> None:
    """DeBERTa-v3's relative attention unless the teacher (a DeBERTa) has its own settings; the pooler
    width follows the student's (DeBERTa's default does not follow hidden_size)."""
    for key, value in DEBERTA_V3_ATTENTION.items():
        values.setdefault(key, value)
    values["pooler_hidden_size"] = values["hidden_size"]


def _electra_config(values: dict[str, Any], teacher: PretrainedConfig) -> None:
    """Factorised embeddings only when the teacher factorises its own (ELECTRA-small: 128 -> 256)."""
    if getattr(teacher, "embedding_size", teacher.hidden_size) == teacher.hidden_size:
        values["embedding_size"] = values["hidden_size"]


BERT_QKV = QKVLayout(holder="attention.self", projections=("query", "key", "value"))

BERT = Family(
    name="BERT",
    model_types=("bert",),
    layers="encoder.layer",
    embeddings=("embeddings",),
    qkv=BERT_QKV,
    mlm_head=("cls",),
    attention=SDPA_FIRST,
)
ROBERTA = Family(
    name="RoBERTa / XLM-R / CamemBERT",
    model_types=("roberta", "xlm-roberta", "camembert"),
    layers="encoder.layer",
    embeddings=("embeddings",),
    qkv=BERT_QKV,
    mlm_head=("lm_head",),
    attention=SDPA_FIRST,
)
XLM_ROBERTA_XL = Family(
    name="XLM-R-XL",
    model_types=("xlm-roberta-xl",),
    layers="encoder.layer",
    embeddings=("embeddings",),
    qkv=BERT_QKV,
    mlm_head=("lm_head",),
    attention=SDPA_FIRST,
    final_norm="encoder.LayerNorm",
)
ELECTRA = Family(
    name="ELECTRA",
    model_types=("electra",),
    layers="encoder.layer",
    embeddings=("embeddings_project", "embeddings"),
    qkv=BERT_QKV,
    mlm_head=("generator_predictions", "generator_lm_head"),
    attention=SDPA_FIRST,
    write_config=_electra_config,
)
DISTILBERT = Family(
    name="DistilBERT",
    model_types=("distilbert",),
    layers="transformer.layer",
    embeddings=("embeddings",),
    qkv=QKVLayout(holder="attention", projections=("q_lin", "k_lin", "v_lin")),
    mlm_head=("vocab_transform", "activation", "vocab_layer_norm", "vocab_projector"),
    attention=SDPA_FIRST,
    shape_fields=("n_layers", "n_heads", "dim", "hidden_dim"),
)
MODERNBERT = Family(
    name="ModernBERT / mmBERT",
    model_types=("modernbert",),
    layers="layers",
    embeddings=("embeddings",),
    qkv=QKVLayout(holder="attn", projections=("Wqkv",), rotary_argument="position_embeddings"),
    mlm_head=("head", "decoder"),
    attention=SDPA_FIRST,
    final_norm="final_norm",
    sliding_window=("layer_types", "sliding_attention"),
    write_config=_modernbert_config,
)
DEBERTA_V2 = Family(
    name="DeBERTa-v2 / v3",
    model_types=("deberta-v2",),
    layers="encoder.layer",
    embeddings=("embeddings",),
    qkv=QKVLayout(holder="attention.self", projections=("query_proj", "key_proj", "value_proj")),
    mlm_head=("cls",),
    attention=EAGER_ONLY,
    first_layer_output="encoder.conv",
    write_config=_deberta_config,
    prepared_mask=False,  # its own extended mask
)
EUROBERT = Family(
    name="EuroBERT",
    model_types=("eurobert",),
    layers="layers",
    embeddings=("embed_tokens",),
    qkv=QKVLayout(
        holder="self_attn",
        projections=("q_proj", "k_proj", "v_proj"),
        kv_heads_field="num_key_value_heads",
        rotary_argument="position_embeddings",
    ),
    mlm_head=("lm_head",),
    attention=SDPA_FIRST,
    final_norm="norm",
    write_config=_eurobert_config,
)
MPNET = Family(
    name="MPNet",
    model_types=("mpnet",),
    layers="encoder.layer",
    embeddings=("embeddings",),
    qkv=QKVLayout(holder="attention.attn", projections=("q", "k", "v")),
    mlm_head=("lm_head",),
    attention=EAGER_ONLY,
)
FAMILIES: tuple[Family, ...] = (
    BERT,
    ROBERTA,
    XLM_ROBERTA_XL,
    ELECTRA,
    DISTILBERT,
    MODERNBERT,
    DEBERTA_V2,
    EUROBERT,
    MPNET,
)
MODEL_TYPES: tuple[str, ...] = tuple(t for f in FAMILIES for t in f.model_types)


# ------------------------------------------------------------------------------------------- lookup


def family_for_model_type(model_type: str) -> Family:
    """The entry describing ``model_type``; a one-line error naming the supported ones otherwise."""
    for family in FAMILIES:
        if model_type in family.model_types:
            return family
    close = difflib.get_close_matches(str(model_type), MODEL_TYPES, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise UnsupportedArchitectureError(
        f"unsupported architecture: model_type {model_type!r}{hint}; supported: {', '.join(MODEL_TYPES)}"
    )


def family_of(config: PretrainedConfig) -> Family:
    """The entry of a model config."""
    return family_for_model_type(getattr(config, "model_type", None) or type(config).__name__)


def base_model(model: nn.Module) -> nn.Module:
    """The encoder without any task head (``model.bert`` for ``BertForMaskedLM``, itself for ``BertModel``)."""
    return getattr(model, "base_model", model)


def get_module(root: nn.Module, path: str) -> nn.Module | None:
    """The submodule at dotted ``path`` below ``root``, or None when any step is missing."""
    module: Any = root
    for name in path.split("."):
        module = getattr(module, name, None)
        if module is None:
            return None
    return module


def detect_family(model: nn.Module) -> Family:
    """The entry of ``model``'s ``config.model_type``, checked against its module layout."""
    config = getattr(model, "config", None)
    if config is None:
        raise UnsupportedArchitectureError(
            f"unsupported architecture {type(model).__name__}: not a Hugging Face model (no config); "
            f"supported model types: {', '.join(MODEL_TYPES)}"
        )
    family = family_of(config)
    base = base_model(model)
    layers = get_module(base, family.layers)
    holder = (
        get_module(layers[0], family.qkv.holder) if isinstance(layers, nn.ModuleList) and layers else None
    )
    found = holder is not None and all(
        isinstance(getattr(holder, n, None), nn.Linear) for n in family.qkv.projections
    )
    if not found or _embedding_module(base, family) is None:
        raise UnsupportedArchitectureError(
            f"{type(model).__name__} (model_type {config.model_type!r}) lacks the {family.name} layout: "
            f"looked for <base>.{family.layers}[i].{family.qkv.holder}.{{{','.join(family.qkv.projections)}}} "
            f"and <base>.{' or '.join(family.embeddings)}"
        )
    return family


# ------------------------------------------------------------------------------------------- modules


def encoder_layers(model: nn.Module, family: Family | None = None) -> nn.ModuleList:
    """The ModuleList of Transformer layers of ``model``."""
    family = family or detect_family(model)
    return get_module(base_model(model), family.layers)  # type: ignore[return-value]


def set_encoder_layers(model: nn.Module, layers: nn.ModuleList, family: Family | None = None) -> None:
    """Replace the ModuleList of Transformer layers of ``model`` (used to truncate the teacher)."""
    family = family or detect_family(model)
    parent_path, _, attr = family.layers.rpartition(".")
    parent = get_module(base_model(model), parent_path) if parent_path else base_model(model)
    setattr(parent, attr, layers)


def _embedding_module(base: nn.Module, family: Family) -> nn.Module | None:
    return next((m for p in family.embeddings if (m := get_module(base, p)) is not None), None)


def hidden_state_module(model: nn.Module, index: int, family: Family) -> nn.Module:
    """The module whose forward output is hidden state ``index`` (module docstring): the embedding output
    for 0, the final norm for the config's last layer of a pre-LN family, else Transformer layer ``index``."""
    base = base_model(model)
    if index == 0:
        return _embedding_module(base, family)  # type: ignore[return-value]
    if index == depth(model.config) and family.final_norm is not None:
        return get_module(base, family.final_norm)  # type: ignore[return-value]
    if index == 1 and family.first_layer_output is not None:
        replacement = get_module(base, family.first_layer_output)
        if replacement is not None:
            return replacement
    return encoder_layers(model, family)[index - 1]


def qkv_holder(layer: nn.Module, family: Family) -> nn.Module:
    """The module of one layer whose forward's first argument is the token states Q/K/V project."""
    return get_module(layer, family.qkv.holder)  # type: ignore[return-value]


def qkv_projections(layer: nn.Module, family: Family) -> tuple[nn.Linear, ...]:
    """The Q, K, V ``nn.Linear`` projections of one layer (one fused Linear for fused families)."""
    holder = qkv_holder(layer, family)
    return tuple(getattr(holder, n) for n in family.qkv.projections)


def mlm_head(model: nn.Module) -> nn.Sequential | None:
    """The family's MLM head chain of a ``*ForMaskedLM`` as one position-wise module (final hidden states
    -> logits, sharing the model's parameters); None for a bare encoder or a model without the chain."""
    if base_model(model) is model:
        return None
    modules = [getattr(model, name, None) for name in detect_family(model).mlm_head]
    if any(not isinstance(m, nn.Module) for m in modules):
        return None
    return nn.Sequential(*modules)


# ------------------------------------------------------------------------------------------- config


def depth(config: PretrainedConfig) -> int:
    """The number of Transformer layers the config describes (a truncated teacher computes fewer)."""
    return int(getattr(config, family_of(config).shape_fields[0]))


def head_dim(config: PretrainedConfig) -> int:
    """Width of one attention head."""
    _, heads, hidden, _ = family_of(config).shape_fields
    return int(getattr(config, "head_dim", None) or getattr(config, hidden) // getattr(config, heads))


def qkv_widths(config: PretrainedConfig) -> tuple[int, int, int]:
    """Widths of the tapped Q, K and V (K and V narrower with grouped-query attention)."""
    family = family_of(config)
    heads = int(getattr(config, family.shape_fields[1]))
    field = family.qkv.kv_heads_field
    kv_heads = int(getattr(config, field, None) or heads) if field else heads
    width = head_dim(config)
    return heads * width, kv_heads * width, kv_heads * width


def sliding_window_layers(config: PretrainedConfig) -> tuple[int, ...]:
    """1-based layers that attend within a sliding window only (empty for families without them)."""
    sliding = family_of(config).sliding_window
    if sliding is None:
        return ()
    field, kind = sliding
    return tuple(i for i, t in enumerate(getattr(config, field, None) or (), start=1) if t == kind)


def derived_config(
    family: Family,
    changes: dict[str, int],
    teacher_config: PretrainedConfig,
    token_ids: dict[str, int] | None = None,
) -> PretrainedConfig:
    """The config of a ``family`` model derived from a teacher's with ``changes`` (field -> value: a student's
    shape, a layerless copy's depth).

    Of the teacher's family: the teacher's config (its model type kept) with the changes. Of another family
    (sharing the teacher's tokenizer): the family's defaults with the teacher's vocabulary, positions and
    special-token ids (``token_ids``, from the tokenizer, win over the teacher config's); a default id
    outside the vocabulary is dropped. Then the family's own fields (:attr:`Family.write_config`).
    """
    if teacher_config.model_type in family.model_types:
        values = teacher_config.to_dict()
        for key in ("architectures", "_name_or_path", "transformers_version", "dtype", "torch_dtype"):
            values.pop(key, None)
    else:
        values = {k: v for k in TOKENIZER_FIELDS if (v := getattr(teacher_config, k, None)) is not None}
        values.update(token_ids or {})
        values["model_type"] = family.model_type
        defaults = CONFIG_MAPPING[family.model_type]().to_dict()
        for name, value in defaults.items():
            outside = isinstance(value, int) and not 0 <= value < values["vocab_size"]
            if name.endswith("_token_id") and name not in values and outside:
                values[name] = None
    values.update(changes)
    if family.write_config is not None:
        family.write_config(values, teacher_config)
    return CONFIG_MAPPING[values.pop("model_type")].from_dict(values)


# ------------------------------------------------------------------------------------------- attention


def attention_implementation(family: Family, requested: str = "auto") -> str:
    """The attention implementation to build a ``family`` model with: ``auto`` = the family's preferred one
    (SDPA where allowed, eager where required); ``flash_attention_2`` needs CUDA and the flash-attn package."""
    if requested == "auto":
        return family.attention[0]
    if requested not in family.attention:
        raise ValueError(
            f"attention {requested!r} is not available for {family.name} (allowed: {', '.join(family.attention)})"
        )
    if requested == "flash_attention_2" and not (
        torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None
    ):
        raise ValueError(
            "attention 'flash_attention_2' needs a CUDA device and the flash-attn package installed"
        )
    return requested
