"""What pruning the student's vocabulary saves on a corpus, before any training: the kept tokens, the
share of corpus tokens that become unknown, and the student's parameters and fp32 size with the full and
the pruned vocabulary (``pretrain-distill vocab``). Needs the teacher's config and tokenizer and the
prepared shards only, no weights."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import torch
from transformers import AutoConfig, AutoModel

from pretrain_distill.core.assets import resolve_model_path
from pretrain_distill.data.manifest import check_tokenizer, load_manifest
from pretrain_distill.models import teacher_tokenizer
from pretrain_distill.models.students import encoder_parameter_count, spec_from_config, student_config
from pretrain_distill.run_config import RunConfig
from pretrain_distill.vocab.resolve import corpus_vocab
from pretrain_distill.vocab.tokenizer import REWRITABLE, model_type


def _encoder_parameters(config: Any) -> int:
    with torch.device("meta"):
        return encoder_parameter_count(AutoModel.from_config(config))


def vocab_savings(cfg: RunConfig) -> dict[str, Any]:
    """The saving of ``student.vocab=corpus`` (with the config's rule) on ``data.shards``."""
    if cfg.student.vocab != "corpus":
        cfg = replace(cfg, student=replace(cfg.student, vocab="corpus"))
    tokenizer = teacher_tokenizer(cfg.teacher)
    teacher = resolve_model_path(cfg.teacher.path)
    manifest = load_manifest(cfg.data.shards)
    check_tokenizer(manifest, tokenizer)
    vocab = corpus_vocab(cfg.student, cfg.data, tokenizer, manifest)
    full = student_config(spec_from_config(cfg.student), AutoConfig.from_pretrained(teacher))
    pruned = type(full).from_dict({**full.to_dict(), "vocab_size": vocab.size})
    params_full, params_pruned = _encoder_parameters(full), _encoder_parameters(pruned)
    kind = model_type(tokenizer.backend_tokenizer.to_str())
    return {
        "teacher_vocab": vocab.teacher_size,
        "kept": vocab.size,
        "rule": {k: vocab.rule[k] for k in ("min_count", "coverage", "language_alpha", "languages")},
        "corpus_tokens": vocab.stats["corpus_tokens"],
        "unknown_share": vocab.stats["unknown_share"],
        "student": spec_from_config(cfg.student).as_list(),
        "params_full": params_full,
        "params_pruned": params_pruned,
        "fp32_mb_full": 4 * params_full / 1e6,
        "fp32_mb_pruned": 4 * params_pruned / 1e6,
        "tokenizer": kind,
        "trainable": kind in REWRITABLE,
    }


def savings_table(record: dict[str, Any]) -> str:
    """The record as a short Markdown table plus the rule and tokenizer lines."""
    shape = ", ".join(map(str, record["student"]))
    rows = [
        "| student [L, A, H, F] | vocabulary | encoder parameters | fp32 size |",
        "|---|---|---|---|",
        f"| {shape} | full ({record['teacher_vocab']:,}) | {record['params_full'] / 1e6:.2f}M | "
        f"{record['fp32_mb_full']:.1f} MB |",
        f"| {shape} | corpus ({record['kept']:,}) | {record['params_pruned'] / 1e6:.2f}M | "
        f"{record['fp32_mb_pruned']:.1f} MB |",
        "",
        f"rule: {json.dumps(record['rule'])}; {record['corpus_tokens']:,.0f} corpus tokens, "
        f"{100 * record['unknown_share']:.3f}% of them become the unknown token",
        f"tokenizer: {record['tokenizer']}"
        + (
            ""
            if record["trainable"]
            else " (cannot be rewritten: training with student.vocab=corpus is refused)"
        ),
    ]
    return "\n".join(rows) + "\n"


__all__ = ["savings_table", "vocab_savings"]
