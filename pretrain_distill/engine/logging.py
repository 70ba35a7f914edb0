"""Metrics: JSON lines (``logs/metrics.jsonl``, one object per logged step) and TensorBoard
(``logs/tensorboard/``), written by rank 0 only.

On resume from step ``s`` both are cut back to ``s`` first (lines after ``s`` are dropped, TensorBoard
purges them), so a killed-and-resumed run's logs read exactly like an uninterrupted run's.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """All records of a ``metrics.jsonl`` file (a torn last line from a killed write is skipped)."""
    records = []
    path = Path(path)
    if not path.is_file():
        return records
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def truncate_metrics(path: Path, last_step: int) -> None:
    """Keep only the records with ``step <= last_step`` (atomically rewritten)."""
    if not path.is_file():
        return
    kept = [r for r in read_metrics(path) if r.get("step", 0) <= last_step]
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
    os.replace(tmp, path)


class MetricsLogger:
    """Rank 0's JSON-lines + TensorBoard writer; a no-op on other ranks."""

    def __init__(self, run_dir: str | Path, enabled: bool, resume_step: int = 0) -> None:
        self.enabled = enabled
        self.path = Path(run_dir) / "logs" / "metrics.jsonl"
        self._tb = None
        self._file = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        truncate_metrics(self.path, resume_step)
        self._file = open(self.path, "a")
        from torch.utils.tensorboard import SummaryWriter

        self._tb = SummaryWriter(str(self.path.parent / "tensorboard"), purge_step=resume_step + 1)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """Append one record (``step`` + ``metrics``) to both sinks."""
        if not self.enabled:
            return
        record = {"step": step, **{k: _plain(v) for k, v in metrics.items()}}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                self._tb.add_scalar(_tb_tag(key), value, step)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def _tb_tag(key: str) -> str:
    """Group loss terms under ``loss/``, validation under ``val/`` and the rest under ``train/``."""
    if key.startswith("val_"):
        return "val/" + ("total" if key == "val_loss" else key.removeprefix("val_loss_"))
    if key == "loss":
        return "loss/total"
    if key.startswith("loss_"):
        return f"loss/{key.removeprefix('loss_')}"
    return f"train/{key}"
