"""Checkpoint directories that are complete or absent: write to a temporary directory, mark, rename.

Layout under ``<run_dir>/checkpoints/``::

    step_00001000/           complete: holds a COMPLETE marker (JSON metadata), renamed into place
    .tmp-step_00002000/      being written (or left by a killed write: ignored, removed on the next save)

A killed or failed write never leaves a ``step_*`` directory without ``COMPLETE``, so
:meth:`CheckpointStore.latest` only ever returns checkpoints that were fully written. ``COMPLETE``
also lists every file with its size and SHA-256 (:mod:`pretrain_distill.core.checkpoint_trust`, the
fine-tuning stage's checkpoints carry the same): :meth:`CheckpointStore.latest_verified` (``resume:
auto``) skips a damaged one with a warning. Only the newest ``keep_last`` complete checkpoints are kept. With several ranks every rank writes its files into the
same temporary directory (a shared filesystem); rank 0 creates and commits it.

Nothing here unpickles: the marker is JSON, the RNG states are safetensors + JSON, and DeepSpeed's own
``.pt`` files are read through :func:`restricted_torch_load` (``weights_only=True`` with an allowlist of
the few DeepSpeed classes they hold).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import random
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pretrain_distill.core.checkpoint_trust import (
    COMPLETE,
    mark_complete,
    newest_verified,
)
from pretrain_distill.core.files import publish_dir

log = logging.getLogger(__name__)

_STEP_DIR = re.compile(r"^step_(\d{8})$")


def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


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

    def latest_verified(self) -> Path | None:
        """The newest complete checkpoint whose files pass their size and checksum checks, warning for each
        newer one that does not; ``None`` when there is none (raises when none of several verifies)."""
        return newest_verified([path for _, path in self.complete()], self.root)

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
        """Mark the staged checkpoint complete (with its files' sizes and checksums), move it into place,
        prune old ones; returns its path."""
        staged = self.staging(step)
        mark_complete(staged, {"step": step, **metadata})
        # Re-saving the same step (a signal right after a periodic save) replaces the earlier copy.
        final = publish_dir(staged, self.root / step_dir_name(step))
        self.prune()
        return final

    def prune(self) -> None:
        """Remove all but the newest ``keep_last`` complete checkpoints."""
        for _, path in self.complete()[: -self.keep_last]:
            shutil.rmtree(path, ignore_errors=True)


RUN_FILES = ("checkpoints", "logs", "plots", "export", "config.yaml", "tokenizer")


def set_aside(run_dir: str | Path) -> Path | None:
    """Move a run directory's outputs (:data:`RUN_FILES`) into ``run_dir/replaced-<UTC time>/``, so a
    new run in it starts clean and nothing of the old one is lost; returns that folder (or ``None``)."""
    run_dir = Path(run_dir)
    present = [run_dir / name for name in RUN_FILES if (run_dir / name).exists()]
    if not present:
        return None
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    aside = run_dir / f"replaced-{stamp}"
    aside.mkdir()
    for path in present:
        path.rename(aside / path.name)
    log.warning("train.resume=overwrite: moved the previous run's %s to %s", ", ".join(RUN_FILES), aside)
    return aside


def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Python, NumPy, torch CPU and CUDA RNG states as ``(tensors, JSON data)`` (no pickle).

    DeepSpeed does not save them; dropout draws from the torch ones.
    """
    version, words, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors.update({f"cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    data = {
        "python": [version, list(words), gauss],
        "numpy": [kind, keys.tolist(), pos, has_gauss, cached],
    }
    return tensors, data


def set_rng_state(tensors: dict[str, torch.Tensor], data: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    version, words, gauss = data["python"]
    random.setstate((version, tuple(words), gauss))
    kind, keys, pos, has_gauss, cached = data["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(tensors["torch"])
    cuda = [
        tensors[k] for k in sorted((k for k in tensors if k.startswith("cuda.")), key=lambda k: int(k[5:]))
    ]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


# The classes DeepSpeed 0.19's optimizer-state files hold besides tensors and plain containers.
DEEPSPEED_CHECKPOINT_CLASSES = (
    "deepspeed.runtime.zero.config.ZeroStageEnum",
    "deepspeed.utils.tensor_fragment.fragment_address",
    "deepspeed.runtime.fp16.loss_scaler.LossScaler",
    "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",
)


def _deepspeed_classes() -> list[Any]:
    out = []
    for name in DEEPSPEED_CHECKPOINT_CLASSES:
        module, _, attr = name.rpartition(".")
        out.append(getattr(importlib.import_module(module), attr))
    return out


@contextlib.contextmanager
def restricted_torch_load() -> Iterator[None]:
    """Within the block every ``torch.load`` (DeepSpeed's included) runs with ``weights_only=True``:
    tensors, plain containers and :data:`DEEPSPEED_CHECKPOINT_CLASSES` only, never arbitrary code."""
    original = torch.load

    def load(*args: Any, **kwargs: Any) -> Any:
        kwargs["weights_only"] = True
        return original(*args, **kwargs)

    torch.load = load
    try:
        with torch.serialization.safe_globals(_deepspeed_classes()):
            yield
    finally:
        torch.load = original
