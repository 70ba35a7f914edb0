"""The frozen teacher: load (with or without the MLM head), freeze, and truncate to the layers read.

The teacher never trains: its parameters have ``requires_grad=False``, it stays in eval mode, and
:func:`truncate_layers` drops the Transformer layers above the deepest one any loss reads, so its
forward stops there (the outputs of the layers kept are unchanged: they do not depend on later layers).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM, PreTrainedModel, PreTrainedTokenizerBase

from pretrain_distill.core.assets import resolve_model_path
from pretrain_distill.core.console import loading_quietly
from pretrain_distill.core.model_names import find_model
from pretrain_distill.core.tokenizer_loading import load_tokenizer
from pretrain_distill.models.families import (
    attention_implementation,
    encoder_layers,
    family_of,
    mlm_head,
    set_encoder_layers,
)
from pretrain_distill.run_config import TeacherConfig

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


class MissingMLMHeadError(ValueError):
    """The teacher has no trained MLM head, but a loss (OD) needs its output distribution."""


#: What to do about a teacher without a trained MLM head (all-MiniLM-L6-v2, ELECTRA discriminators, DeBERTa-v3).
FIT_MLM_HEAD_HINT = (
    "fit one on the frozen teacher with `pretrain-distill fit-mlm-head --teacher T --shards S --out DIR` "
    "and distil from DIR, or drop the 'od' term"
)


def teacher_dtype(name: str, device: torch.device | str) -> torch.dtype:
    """``TeacherConfig.dtype`` as a torch dtype; ``"auto"`` = bf16 on CUDA, fp32 elsewhere."""
    if name == "auto":
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    if name not in _DTYPES:
        raise ValueError(f"teacher dtype must be auto, bf16, fp16 or fp32, got {name!r}")
    return _DTYPES[name]


def freeze(model: nn.Module) -> nn.Module:
    """Eval mode and ``requires_grad=False`` on every parameter; returns ``model``."""
    model.eval()
    model.requires_grad_(False)
    return model


def has_mlm_head(model: nn.Module) -> bool:
    """Whether ``model`` carries its family's MLM head chain (a ``*ForMaskedLM`` model)."""
    return mlm_head(model) is not None


def truncate_layers(model: nn.Module, depth: int) -> nn.Module:
    """Keep Transformer layers ``1..depth`` of ``model`` (in place; the config keeps the full depth)."""
    layers = encoder_layers(model)
    if not 1 <= depth <= len(layers):
        raise ValueError(f"cannot truncate {type(model).__name__} to {depth} layers: it has {len(layers)}")
    if depth < len(layers):
        set_encoder_layers(model, nn.ModuleList(list(layers)[:depth]))
    return model


def teacher_tokenizer(teacher_cfg: TeacherConfig) -> PreTrainedTokenizerBase:
    """The run's tokenizer: ``teacher.tokenizer``, else the teacher's own, checked against the teacher's
    embedding table (:func:`load_tokenizer`); a missing path is named by its setting."""
    teacher = find_model(teacher_cfg.path, "teacher.path")
    tokenizer = find_model(teacher_cfg.tokenizer, "teacher.tokenizer") if teacher_cfg.tokenizer else teacher
    return load_tokenizer(tokenizer, teacher)


def build_teacher(
    teacher_cfg: TeacherConfig,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    needs_mlm_head: bool = False,
) -> PreTrainedModel:
    """Load the teacher frozen, in eval mode, on ``device`` in ``dtype`` (default: ``teacher_cfg.dtype``).

    With ``needs_mlm_head`` it is loaded as ``AutoModelForMaskedLM`` and must have trained MLM head
    weights (:class:`MissingMLMHeadError` otherwise, e.g. for all-MiniLM-L6-v2, an ELECTRA discriminator
    or a DeBERTa-v3 checkpoint); without, as the bare ``AutoModel`` with the pooler dropped (no loss reads
    it). The attention implementation is ``teacher_cfg.attention`` (``auto``: the family's preferred one).
    """
    path = resolve_model_path(teacher_cfg.path)
    dtype = dtype or teacher_dtype(teacher_cfg.dtype, device)
    attention = attention_implementation(family_of(AutoConfig.from_pretrained(path)), teacher_cfg.attention)
    factory = AutoModelForMaskedLM if needs_mlm_head else AutoModel
    with loading_quietly():  # an MLM head or pooler the run does not read is no news; checked below
        model, info = factory.from_pretrained(
            path, dtype=dtype, attn_implementation=attention, output_loading_info=True
        )
    prefix = model.base_model_prefix + "." if needs_mlm_head else ""
    encoder_missing = sorted(
        k for k in info["missing_keys"] if k.startswith(prefix) and not k.startswith(prefix + "pooler.")
    )
    if encoder_missing:
        raise ValueError(
            f"teacher {path}: its checkpoint lacks encoder weights ({', '.join(encoder_missing)})"
        )
    if needs_mlm_head:
        head_missing = [k for k in info["missing_keys"] if not k.startswith(prefix)]
        if head_missing:
            raise MissingMLMHeadError(
                f"teacher {path} has no trained MLM head (missing {', '.join(sorted(head_missing))}), and "
                f"the 'od' term needs its MLM logits: {FIT_MLM_HEAD_HINT}"
            )
    elif getattr(model, "pooler", None) is not None:
        model.pooler = None
    return freeze(model.to(device))
