"""What an export reads, checked before anything is written: the run's checkpoint, tokenizer and config."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from pretrain_distill.core.checkpoint_trust import COMPLETE, verify_checkpoint
from pretrain_distill.engine.checkpoint import CheckpointStore


@dataclass(frozen=True)
class ExportSource:
    """One complete checkpoint of a run, with the files an export needs."""

    run_dir: Path
    checkpoint: Path
    tokenizer_dir: Path
    config: dict[str, Any]  # the resolved run config (checkpoint's config.yaml)
    metadata: dict[str, Any]  # the checkpoint's COMPLETE record (state counters, world size)

    @property
    def student_dir(self) -> Path:
        return self.checkpoint / "student"

    @property
    def step(self) -> int:
        return int(self.metadata.get("state", {}).get("step", 0))

    @property
    def written_at(self) -> str:
        """When the checkpoint was completed (UTC, from its COMPLETE marker)."""
        mtime = (self.checkpoint / COMPLETE).stat().st_mtime
        return datetime.fromtimestamp(mtime, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")

    def in_run(self, path: Path) -> str:
        """``path`` as the run names it: relative to the run, under the run directory's name
        (``distill/checkpoints/step_00000004``); the folder name alone outside the run."""
        try:
            return str(Path(self.run_dir.name) / path.resolve().relative_to(self.run_dir.resolve()))
        except ValueError:
            return path.name

    def describe(self) -> str:
        """``<checkpoint> (step N, written <time>)``: which weights an export holds."""
        return f"{self.checkpoint} (step {self.step}, written {self.written_at})"


def resolve_source(run_dir: str | Path, checkpoint: str | Path | None = None) -> ExportSource:
    """The checkpoint to export (default: the newest complete one of ``run_dir``), every input checked.

    Raises FileNotFoundError naming the missing piece; nothing is written.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: no such run directory")
    if checkpoint is None:
        checkpoint = CheckpointStore(run_dir / "checkpoints", keep_last=1).latest_verified()
        if checkpoint is None:
            raise FileNotFoundError(f"{run_dir}: no complete checkpoint under checkpoints/ to export")
    checkpoint = Path(checkpoint)
    metadata = verify_checkpoint(checkpoint)  # CheckpointError naming a missing / truncated / altered file
    for needed in ("student/config.json", "config.yaml"):
        if not (checkpoint / needed).is_file():
            raise FileNotFoundError(
                f"{checkpoint}: no {needed} (not a checkpoint of pretrain-distill train?)"
            )
    tokenizer_dir = run_dir / "tokenizer"
    if not tokenizer_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: no tokenizer/ directory (written when the run started)")
    config = yaml.safe_load((checkpoint / "config.yaml").read_text()) or {}
    return ExportSource(run_dir, checkpoint, tokenizer_dir, config, metadata)
