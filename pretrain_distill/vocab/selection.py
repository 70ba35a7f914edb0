"""Which teacher tokens a pruned student keeps (``student.vocab: corpus``), and the record of that choice.

The rule, on the training shards' token counts ``c`` (:mod:`pretrain_distill.data.token_counts`):

1. candidates: the token ids with ``c[id] >= student.vocab_min_count``;
2. with ``student.vocab_coverage = p < 1``: the special tokens, then the candidates by decreasing count
   (ties: lower id first), up to the shortest prefix whose counts reach ``p * sum(c)``;
3. the special tokens are always kept; the kept ids, in increasing teacher-id order, are the student's
   ids ``0 .. K-1``; every other token reads as the unknown token.

Multilingual shards: ``c = sum_l w_l c_l`` with ``w_l = m_l / n_l`` the rate at which the run reads
language ``l`` (``m_l`` sequences per epoch of its ``n_l``, from ``data.language_alpha``,
:func:`pretrain_distill.data.plan.language_targets`): the tokens counted over the languages the run
samples, as often as it samples them (``alpha = 1``: the plain corpus counts).

The choice is a :class:`StudentVocab`, saved as ``student_vocab.json`` beside every saved student (each
checkpoint's ``student/``, the export), so that a resume, a later stage and an export use the very same
one, whatever happens to the shards or the sampling settings later.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pretrain_distill.core.errors import ConfigError
from pretrain_distill.core.files import atomic_write_json
from pretrain_distill.data.plan import language_targets

VOCAB_FILE = "student_vocab.json"


@dataclass(frozen=True)
class StudentVocab:
    """A pruned student vocabulary: ``kept[s]`` is the teacher id of student id ``s``."""

    kept: tuple[int, ...]  # teacher ids, increasing
    teacher_size: int  # the teacher's vocabulary size
    teacher_unk: int  # the teacher's unknown-token id (kept)
    rule: dict[str, Any] = field(default_factory=dict)  # the settings that chose it
    stats: dict[str, Any] = field(default_factory=dict)  # corpus tokens, share that became unknown

    def __post_init__(self) -> None:
        kept = np.asarray(self.kept)
        if len(kept) == 0 or np.any(np.diff(kept) <= 0) or kept[0] < 0 or kept[-1] >= self.teacher_size:
            raise ValueError(
                "a student vocabulary keeps distinct, increasing teacher ids within the teacher's"
            )
        if self.teacher_unk not in self.kept:
            raise ValueError(f"a student vocabulary keeps the unknown token (teacher id {self.teacher_unk})")

    @property
    def size(self) -> int:
        """The student's vocabulary size ``K``."""
        return len(self.kept)

    @property
    def student_unk(self) -> int:
        return self.kept.index(self.teacher_unk)

    def lookup(self) -> np.ndarray:
        """``[teacher_size]`` int64: teacher id -> student id (unkept -> the student's unknown id)."""
        table = np.full(self.teacher_size, self.student_unk, dtype=np.int64)
        table[np.asarray(self.kept)] = np.arange(self.size)
        return table

    def remap(self, teacher_ids: Iterable[int]) -> list[int]:
        """Teacher ids -> student ids on the host (the exported tokenizer's contract; tests, tools)."""
        table = self.lookup()
        return [int(table[i]) for i in teacher_ids]

    def save(self, directory: str | Path) -> Path:
        """Write ``student_vocab.json`` into ``directory``."""
        return atomic_write_json(Path(directory) / VOCAB_FILE, {**asdict(self), "kept": list(self.kept)})

    @classmethod
    def load(cls, directory: str | Path) -> StudentVocab | None:
        """The vocabulary saved in ``directory``; None when it holds none (a full-vocabulary student)."""
        path = Path(directory) / VOCAB_FILE
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text())
            return cls(**{**data, "kept": tuple(data["kept"])})
        except (ValueError, KeyError, TypeError) as err:
            raise ConfigError(f"{path}: not a valid student vocabulary: {err}") from None


def sampled_counts(
    counts: dict[str, np.ndarray], sequences: dict[str, int], language_alpha: float
) -> np.ndarray:
    """``sum_l w_l c_l`` with ``w_l = m_l / n_l`` (module doc); plain integer sums when every ``w_l = 1``."""
    targets = language_targets({lang: sequences[lang] for lang in counts}, language_alpha)
    weights = {lang: targets[lang] / sequences[lang] for lang in counts}
    if all(w == 1 for w in weights.values()):
        return sum(counts[lang] for lang in sorted(counts))
    return sum(weights[lang] * counts[lang].astype(np.float64) for lang in sorted(counts))


def select_kept(
    counts: np.ndarray, special_ids: Iterable[int], min_count: float, coverage: float
) -> np.ndarray:
    """The kept teacher ids (increasing) under the rule of the module doc; pure."""
    if not 0 < coverage <= 1:
        raise ConfigError(f"student.vocab_coverage: must be in (0, 1], got {coverage!r}")
    special = np.unique(np.asarray(list(special_ids), dtype=np.int64))
    candidates = np.flatnonzero(counts >= min_count)
    candidates = candidates[~np.isin(candidates, special)]
    if coverage < 1:
        order = candidates[np.lexsort((candidates, -counts[candidates]))]  # count desc, then id asc
        covered = counts[special].sum() + np.concatenate([[0], np.cumsum(counts[order])])
        candidates = order[: int(np.searchsorted(covered, coverage * counts.sum(), side="left"))]
    if len(candidates) < len(special):
        raise ConfigError(
            f"student.vocab=corpus keeps {len(candidates)} tokens besides the {len(special)} special tokens "
            f"(vocab_min_count={min_count:g}, vocab_coverage={coverage:g}): fewer than the special tokens; "
            "lower student.vocab_min_count or raise student.vocab_coverage"
        )
    return np.union1d(candidates, special)


def choose_vocab(
    counts: np.ndarray,
    special_ids: Iterable[int],
    unk_id: int | None,
    min_count: float,
    coverage: float,
    rule: dict[str, Any] | None = None,
) -> StudentVocab:
    """The :class:`StudentVocab` of ``counts`` (the teacher's vocabulary size is ``len(counts)``)."""
    if unk_id is None:
        raise ConfigError(
            "student.vocab=corpus maps the tokens it drops to the unknown token, but the teacher's tokenizer "
            "has none: use student.vocab=full"
        )
    kept = select_kept(counts, [*special_ids, unk_id], min_count, coverage)
    total = float(counts.sum())
    dropped = total - float(counts[kept].sum())
    stats = {
        "kept": int(len(kept)),
        "teacher_size": int(len(counts)),
        "corpus_tokens": total,
        "unknown_share": dropped / total if total else 0.0,
    }
    return StudentVocab(tuple(int(i) for i in kept), len(counts), int(unk_id), dict(rule or {}), stats)
