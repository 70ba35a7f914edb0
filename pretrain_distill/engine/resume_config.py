"""A resumed run is the same run: the checkpoint's config against the config it is resumed with.

What defines a run (:data:`RUN_IDENTITY`: the teacher, the student, the objective and its masking)
must not change when a checkpoint is continued; otherwise the steps after the resume would train
another model or optimise another loss on top of the first one's, and the result would be labelled as
one run. The data is checked by its content, not its path, when the loader restores its position
(``ShardLoader.load_state_dict``: sequence count, tokenizer checksum, seed, shuffle, language sampling),
so shards copied to another place (a node-local disk after a requeue) resume. Everything else may
change on a resume and is listed in the start-up summary: the budget (``train.max_steps``,
``train.epochs``), batch and world size (elastic resume), loader workers, precision and DeepSpeed
settings, logging, checkpointing and the speed levers.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from pretrain_distill.config import RunConfig, StudentConfig
from pretrain_distill.config_changes import config_changes, saved_config, under
from pretrain_distill.configuration import ConfigError, from_dict, to_dict

#: Config keys (a section or one field) whose values a checkpoint must be resumed with.
RUN_IDENTITY: tuple[str, ...] = ("teacher.path", "student", "objective", "data.mlm_probability")


def _student_shape_resolved(tree: dict[str, Any]) -> dict[str, Any]:
    """``student: {preset: 3L}`` and ``student: {preset: 3L, layers: 3}`` name one student: both become
    ``student: {shape: [3, 12, 384, 1024], ...}`` (the fields as written when the shape is incomplete)."""
    from pretrain_distill.models.students import spec_from_config

    student = dict(tree.get("student") or {})
    try:
        spec = spec_from_config(from_dict(StudentConfig, student, prefix="student."))
    except ValueError:
        return tree
    rest = {k: v for k, v in student.items() if k not in ("preset", *asdict(spec))}
    return {**tree, "student": {**rest, "shape": spec.as_list()}}


def resume_changes(saved: dict[str, Any], current: dict[str, Any]) -> tuple[list[str], list[str]]:
    """``(identity changes, other changes)`` between two run config trees (``"key: old -> new"``)."""
    return config_changes(
        _student_shape_resolved(saved), _student_shape_resolved(current), under(RUN_IDENTITY)
    )


def check_resume_config(checkpoint: Path, cfg: RunConfig) -> list[str]:
    """Refuse (:class:`ConfigError`, one line) to resume ``checkpoint`` with another teacher, student,
    objective or masking rate than it was written with; return the other settings that changed."""
    identity, other = resume_changes(saved_config(checkpoint / "config.yaml"), to_dict(cfg))
    if identity:
        raise ConfigError(
            f"{checkpoint} belongs to another run ({'; '.join(identity)}): a resumed run keeps its teacher, "
            "student and objective. Start it elsewhere (train.output_dir=...) or over "
            "(train.resume=overwrite moves the old run aside)"
        )
    return other
