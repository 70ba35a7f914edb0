"""Module layout of the supported Hugging Face encoder families: where the layers, the embeddings and
the Q/K/V projections live, and which config fields hold the shape.

BERT, RoBERTa and XLM-R share one layout (``<base>.encoder.layer[i].attention.self.{query,key,value}``);
DistilBERT has its own (``<base>.transformer.layer[i].attention.{q_lin,k_lin,v_lin}``). Everything
else is refused with an error naming the modules that were looked for.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn


class UnsupportedArchitectureError(ValueError):
    """A model whose module layout is none of the supported encoder families."""


@dataclass(frozen=True)
class Family:
    """One encoder family's layout: attribute paths relative to the base model, config field names."""

    name: str
    model_types: tuple[str, ...]
    layers_path: str  # ModuleList of Transformer layers, relative to the base model
    qkv_path: str  # module holding the Q/K/V Linear layers, relative to one layer
    qkv_names: tuple[str, str, str]
    # Config field names for (layers, heads, hidden, ffn).
    shape_fields: tuple[str, str, str, str]


BERT_LIKE = Family(
    name="BERT/RoBERTa/XLM-R",
    model_types=("bert", "roberta", "xlm-roberta"),
    layers_path="encoder.layer",
    qkv_path="attention.self",
    qkv_names=("query", "key", "value"),
    shape_fields=("num_hidden_layers", "num_attention_heads", "hidden_size", "intermediate_size"),
)
DISTILBERT = Family(
    name="DistilBERT",
    model_types=("distilbert",),
    layers_path="transformer.layer",
    qkv_path="attention",
    qkv_names=("q_lin", "k_lin", "v_lin"),
    shape_fields=("n_layers", "n_heads", "dim", "hidden_dim"),
)
FAMILIES: tuple[Family, ...] = (BERT_LIKE, DISTILBERT)


def _expected_layouts() -> str:
    return "; ".join(
        f"{f.name}: <base>.{f.layers_path}[i].{f.qkv_path}.{{{','.join(f.qkv_names)}}}" for f in FAMILIES
    )


def family_for_model_type(model_type: str) -> Family:
    """The family of a config's ``model_type`` (used to build students of the teacher's family)."""
    for family in FAMILIES:
        if model_type in family.model_types:
            return family
    supported = ", ".join(t for f in FAMILIES for t in f.model_types)
    raise UnsupportedArchitectureError(
        f"unsupported architecture: model_type {model_type!r} (supported: {supported})"
    )


def base_model(model: nn.Module) -> nn.Module:
    """The encoder without any task head (``model.bert`` for ``BertForMaskedLM``, itself for ``BertModel``)."""
    return getattr(model, "base_model", model)


def mlm_head(model: nn.Module) -> nn.Module | None:
    """The position-wise module that maps a ``*ForMaskedLM``'s final hidden states to logits (``cls`` for
    BERT, ``lm_head`` for RoBERTa / XLM-R); None for a bare encoder or a head spread over several modules
    (DistilBERT)."""
    heads = [m for m in model.children() if m is not base_model(model)]
    return heads[0] if base_model(model) is not model and len(heads) == 1 else None


def _get(module: nn.Module, path: str) -> nn.Module | None:
    for name in path.split("."):
        module = getattr(module, name, None)
        if module is None:
            return None
    return module


def detect_family(model: nn.Module) -> Family:
    """The family whose module layout ``model`` has; error naming the modules looked for otherwise."""
    base = base_model(model)
    for family in FAMILIES:
        layers = _get(base, family.layers_path)
        if isinstance(layers, nn.ModuleList) and len(layers) > 0:
            holder = _get(layers[0], family.qkv_path)
            if holder is not None and all(
                isinstance(getattr(holder, n, None), nn.Linear) for n in family.qkv_names
            ):
                if not isinstance(getattr(base, "embeddings", None), nn.Module):
                    continue
                return family
    raise UnsupportedArchitectureError(
        f"unsupported architecture {type(model).__name__}: looked for <base>.embeddings and "
        f"{_expected_layouts()}"
    )


def encoder_layers(model: nn.Module, family: Family | None = None) -> nn.ModuleList:
    """The ModuleList of Transformer layers of ``model``."""
    family = family or detect_family(model)
    return _get(base_model(model), family.layers_path)


def set_encoder_layers(model: nn.Module, layers: nn.ModuleList, family: Family | None = None) -> None:
    """Replace the ModuleList of Transformer layers of ``model`` (used to truncate the teacher)."""
    family = family or detect_family(model)
    parent_path, _, attr = family.layers_path.rpartition(".")
    setattr(_get(base_model(model), parent_path), attr, layers)


def qkv_modules(layer: nn.Module, family: Family) -> tuple[nn.Linear, nn.Linear, nn.Linear]:
    """The (query, key, value) Linear projections of one Transformer layer."""
    holder = _get(layer, family.qkv_path)
    return tuple(getattr(holder, n) for n in family.qkv_names)  # type: ignore[return-value]
