"""The ``transformers`` format: the student as the Hugging Face model a user fine-tunes.

By default the base encoder class of the teacher's family (``BertModel``, ``RobertaModel``,
``XLMRobertaModel``, ``DistilBertModel``), so ``AutoModel`` and ``AutoModelForSequenceClassification``
find every weight they use. The MLM head (``*ForMaskedLM``) is written only when the run trained it (an
``od`` or ``mlm`` objective term) or when asked: a head nobody trained makes ``fill-mask`` print garbage.

Pooler: the student never had one (distillation works on hidden states), but ``BertModel`` and
``BertForSequenceClassification`` use one. Families with a pooler get it initialised to the identity
(``pooler_output = tanh(h_[CLS])``): nothing is left randomly initialised, and fine-tuning starts from the
[CLS] vector the student learnt. (``RobertaForSequenceClassification`` does not use the pooler, so it
reports it as unused, as it does for ``roberta-base`` itself.)

Tied weights (the MLM decoder and the word embeddings) are stored once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoModel, AutoModelForMaskedLM, PretrainedConfig, PreTrainedModel

from pretrain_distill.export.source import ExportSource
from pretrain_distill.models.families import base_model
from pretrain_distill.vocab import StudentVocab, write_student_tokenizer

#: Objective terms that train the student's MLM head.
MLM_TRAINING_TERMS = ("od", "mlm")


def mlm_head_trained(run_config: dict[str, Any]) -> bool:
    """Whether the run's objective trained the student's MLM head (a positive ``od`` / ``mlm`` weight)."""
    weights = run_config.get("objective", {}).get("weights", {}) or {}
    return any(float(weights.get(term) or 0) > 0 for term in MLM_TRAINING_TERMS)


def identity_pooler(config: PretrainedConfig) -> nn.Module | None:
    """The family's pooler with identity weights and zero bias, or None when the family has none."""
    with torch.device("meta"):
        reference = AutoModel.from_config(config)
    pooler = getattr(reference, "pooler", None)
    if pooler is None:
        return None
    pooler = pooler.to_empty(device="cpu")
    with torch.no_grad():
        pooler.dense.weight.copy_(torch.eye(config.hidden_size))
        pooler.dense.bias.zero_()
    return pooler


def student_model(student_dir: Path, with_mlm_head: bool) -> PreTrainedModel:
    """The trained student (fp32) as its base encoder + pooler, or as ``*ForMaskedLM`` + pooler."""
    return exported_form(
        AutoModelForMaskedLM.from_pretrained(student_dir, dtype=torch.float32), with_mlm_head
    )


def exported_form(mlm: PreTrainedModel, with_mlm_head: bool) -> PreTrainedModel:
    """A student ``*ForMaskedLM`` as it is exported: its base encoder with an identity pooler, or the
    whole model (the same pooler in place) when the MLM head is kept."""
    base = base_model(mlm)
    pooler = identity_pooler(mlm.config)
    if pooler is not None:
        base.pooler = pooler
    return mlm if with_mlm_head else base


def write_tokenizer(source: ExportSource, out: Path) -> None:
    """The run's tokenizer into ``out``; for a pruned vocabulary rewritten to give the student's ids, with
    the vocabulary itself (``student_vocab.json``, read by ``student.init_from``)."""
    vocab = StudentVocab.load(source.student_dir)
    if vocab is not None:
        write_student_tokenizer(source.tokenizer_dir, vocab, out)
        vocab.save(out)
        return
    for item in source.tokenizer_dir.iterdir():
        if item.is_file():
            (out / item.name).write_bytes(item.read_bytes())


def write_transformers(source: ExportSource, out: Path, with_mlm_head: bool) -> PreTrainedModel:
    """Write the student (config.json + model.safetensors) and the tokenizer into ``out``."""
    model = student_model(source.student_dir, with_mlm_head)
    model.save_pretrained(out)
    write_tokenizer(source, out)
    return model
