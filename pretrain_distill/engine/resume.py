"""Which checkpoint a run continues (``train.resume``), and that it continues the same run.

A checkpoint's ``config.yaml`` is compared with the run's before anything is loaded (the rule of
:mod:`pretrain_distill.core.run_identity`; :data:`pretrain_distill.run_config.RESUME_MAY_CHANGE` lists
what may change): another teacher, student, objective or masking rate is refused in one line naming each
change; every other change is allowed and listed in the start-up summary.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from pretrain_distill.core.checkpoint_trust import COMPLETE, CheckpointError, verify_checkpoint
from pretrain_distill.core.config_loading import from_dict, to_dict
from pretrain_distill.core.errors import ConfigError
from pretrain_distill.core.run_identity import check_same_run, resume_changes, saved_config
from pretrain_distill.engine.checkpoint import CheckpointStore
from pretrain_distill.models.students import spec_from_config
from pretrain_distill.run_config import RESUME_MAY_CHANGE, RunConfig, StudentConfig


def resolve_resume(resume: str, store: CheckpointStore) -> Path | None:
    """``train.resume``: ``auto`` = newest verified checkpoint (or none), ``none`` (refused where
    checkpoints exist), ``overwrite`` (start over; the caller moves the old run aside), or a path."""
    if resume == "overwrite":
        return None
    if resume == "none":
        if store.complete():
            raise ConfigError(
                f"train.output_dir={store.root.parent} holds checkpoints of a run (newest "
                f"{store.complete()[-1][1].name}): continue it with train.resume=auto, or start over with "
                "train.resume=overwrite (moves the old run aside)"
            )
        return None
    if resume == "auto":
        return store.latest_verified()
    path = Path(resume)
    if not (path / COMPLETE).is_file():
        raise ConfigError(f"train.resume: {resume} is not a complete checkpoint directory")
    try:
        verify_checkpoint(path)
    except CheckpointError as err:
        raise ConfigError(f"train.resume: {err}") from None
    return path


def _student_shape_resolved(tree: dict[str, Any]) -> dict[str, Any]:
    """``student: {preset: 3L}`` and ``student: {preset: 3L, layers: 3}`` name one student: both become
    ``student: {shape: [3, 12, 384, 1024], ...}`` (the fields as written when the shape is incomplete)."""
    student = dict(tree.get("student") or {})
    try:
        spec = spec_from_config(from_dict(StudentConfig, student, prefix="student."))
    except ValueError:
        return tree
    rest = {k: v for k, v in student.items() if k not in ("preset", *asdict(spec))}
    return {**tree, "student": {**rest, "shape": spec.as_list()}}


def _with_defaults(saved: dict[str, Any]) -> dict[str, Any]:
    """A saved config tree with the fields it lacks at their defaults: a checkpoint written before a field
    existed ran as its default says (e.g. ``student.vocab: full``)."""
    defaults = to_dict(RunConfig())
    return {
        **saved,
        **{k: {**v, **(saved.get(k) or {})} for k, v in defaults.items() if isinstance(v, dict)},
    }


def run_changes(saved: dict[str, Any], current: dict[str, Any]) -> tuple[list[str], list[str]]:
    """``(identity changes, other changes)`` between two run config trees (``"key: old -> new"``)."""
    saved = _student_shape_resolved(_with_defaults(saved))
    return resume_changes(saved, _student_shape_resolved(current), RESUME_MAY_CHANGE)


def check_resume_config(checkpoint: Path, cfg: RunConfig) -> list[str]:
    """Refuse (:class:`ConfigError`, one line) to resume ``checkpoint`` with another teacher, student,
    objective or masking rate than it was written with; return the other settings that changed."""

    def refuse(changes: str) -> ConfigError:
        return ConfigError(
            f"{checkpoint} belongs to another run ({changes}): a resumed run keeps its teacher, student and "
            "objective. Start it elsewhere (train.output_dir=...) or over (train.resume=overwrite moves the "
            "old run aside)"
        )

    saved = _student_shape_resolved(_with_defaults(saved_config(checkpoint / "config.yaml")))
    return check_same_run(saved, _student_shape_resolved(to_dict(cfg)), RESUME_MAY_CHANGE, refuse)
