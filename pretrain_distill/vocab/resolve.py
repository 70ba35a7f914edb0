"""The student vocabulary of a run: none (``student.vocab: full``), or the pruned one that the run's
resumed checkpoint or ``student.init_from`` saved, or one chosen from the training shards' token counts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pretrain_distill.core.errors import ConfigError
from pretrain_distill.data.token_counts import load_token_counts
from pretrain_distill.run_config import DataConfig, StudentConfig
from pretrain_distill.vocab.selection import StudentVocab, choose_vocab, sampled_counts
from pretrain_distill.vocab.tokenizer import check_rewritable


def always_kept(tokenizer: Any) -> list[int]:
    """The special tokens, and every id up to the padding id (RoBERTa counts positions from it)."""
    pad = tokenizer.pad_token_id
    return sorted({*tokenizer.all_special_ids, *range((pad if pad is not None else -1) + 1)})


def corpus_vocab(
    student_cfg: StudentConfig, data_cfg: DataConfig, tokenizer: Any, manifest: dict[str, Any]
) -> StudentVocab:
    """The vocabulary the rule of :mod:`.selection` keeps on ``data_cfg.shards``."""
    counts = load_token_counts(data_cfg.shards, manifest)
    sequences = {lang: entry["sequences"] for lang, entry in manifest["languages"].items()}
    rule = {
        "min_count": student_cfg.vocab_min_count,
        "coverage": student_cfg.vocab_coverage,
        "language_alpha": data_cfg.language_alpha,
        "languages": sorted(counts),
        "shards": str(data_cfg.shards),
    }
    return choose_vocab(
        sampled_counts(counts, sequences, data_cfg.language_alpha),
        always_kept(tokenizer),
        tokenizer.unk_token_id,
        student_cfg.vocab_min_count,
        student_cfg.vocab_coverage,
        rule,
    )


def run_vocab(
    student_cfg: StudentConfig,
    data_cfg: DataConfig,
    tokenizer: Any,
    manifest: dict[str, Any],
    saved_in: list[Path],
) -> StudentVocab | None:
    """The run's student vocabulary (None: the teacher's). ``saved_in``: model directories whose saved
    vocabulary wins, in order (the resumed checkpoint's ``student/``, ``student.init_from``)."""
    saved = next((v for v in map(StudentVocab.load, saved_in) if v is not None), None)
    if student_cfg.vocab == "full":
        if saved is not None:
            raise ConfigError(
                "student.vocab=full, but the student it starts from has a pruned vocabulary: "
                "set student.vocab=corpus"
            )
        return None
    check_rewritable(tokenizer)
    if saved is not None:
        if saved.teacher_size != len(tokenizer):
            raise ConfigError(
                f"the saved student vocabulary is for a {saved.teacher_size}-token teacher vocabulary, the "
                f"run's tokenizer has {len(tokenizer)}"
            )
        return saved
    return corpus_vocab(student_cfg, data_cfg, tokenizer, manifest)
