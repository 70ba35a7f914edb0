"""Checkpoint directories that are complete or absent: write to a temporary directory, mark, rename.

Layout under ``<run_dir>/checkpoints/``::

    step_00001000/           complete: holds a COMPLETE marker (JSON metadata), renamed into place
    .tmp-step_00002000/      being written (or left by a killed write: ignored, removed on the next save)

A killed or failed write never leaves a ``step_*`` directory without ``COMPLETE``, so
:meth:`CheckpointStore.latest` (``resume: auto``) only ever returns checkpoints that were fully written.
Only the newest ``keep_last`` complete checkpoints are kept. With several ranks every rank writes its
files into the same temporary directory (a shared filesystem); rank 0 creates and commits it.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

COMPLETE = "COMPLETE"
_STEP_DIR = re.compile(r"^step_(\d{8})$")


def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class CheckpointStore:
    """The ``checkpoints/`` directory of a run: list, stage, commit and prune checkpoints."""

    def __init__(self, root: str | Path, keep_last: int) -> None:
        if keep_last < 1:
            raise ValueError(f"train.keep_last must be >= 1, got {keep_last}")
        self.root = Path(root)
        self.keep_last = keep_last

    def complete(self) -> list[tuple[int, Path]]:
        """Complete checkpoints as ``(step, path)``, oldest first."""
        if not self.root.is_dir():
            return []
        found = []
        for path in self.root.iterdir():
            match = _STEP_DIR.match(path.name)
            if match and (path / COMPLETE).is_file():
                found.append((int(match.group(1)), path))
        return sorted(found)

    def latest(self) -> Path | None:
        """The newest complete checkpoint, or ``None``."""
        done = self.complete()
        return done[-1][1] if done else None

    def staging(self, step: int) -> Path:
        """The temporary directory a checkpoint of ``step`` is written into."""
        return self.root / f".tmp-{step_dir_name(step)}"

    def begin(self, step: int) -> Path:
        """Create an empty staging directory for ``step`` (removing leftovers of killed writes)."""
        self.root.mkdir(parents=True, exist_ok=True)
        for stale in self.root.glob(".tmp-step_*"):
            shutil.rmtree(stale, ignore_errors=True)
        path = self.staging(step)
        path.mkdir()
        return path

    def commit(self, step: int, metadata: dict[str, Any]) -> Path:
        """Mark the staged checkpoint complete, move it into place, prune old ones; returns its path."""
        staged = self.staging(step)
        marker = staged / COMPLETE
        with open(marker, "w") as handle:
            json.dump({"step": step, **metadata}, handle, indent=2)
            handle.flush()
            os.fsync(handle.fileno())
        _fsync_dir(staged)
        final = self.root / step_dir_name(step)
        if final.exists():  # re-saving the same step (e.g. a signal right after a periodic save)
            shutil.rmtree(final)
        os.replace(staged, final)
        _fsync_dir(self.root)
        self.prune()
        return final

    def prune(self) -> None:
        """Remove all but the newest ``keep_last`` complete checkpoints."""
        for _, path in self.complete()[: -self.keep_last]:
            shutil.rmtree(path, ignore_errors=True)


def read_metadata(checkpoint: str | Path) -> dict[str, Any]:
    """The JSON metadata stored in a complete checkpoint's marker."""
    marker = Path(checkpoint) / COMPLETE
    if not marker.is_file():
        raise FileNotFoundError(f"{checkpoint} is not a complete checkpoint (no {COMPLETE} marker)")
    return json.loads(marker.read_text())


def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch CPU and CUDA RNG states (DeepSpeed does not save them; dropout needs them)."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
