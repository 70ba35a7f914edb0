"""Checkpoint directories that are complete or absent: write to a temporary directory, mark, rename.

Layout under ``<run_dir>/checkpoints/``::

    step_00001000/           complete: holds a COMPLETE marker (JSON metadata), renamed into place
    .tmp-step_00002000/      being written (or left by a killed write: ignored, removed on the next save)

A killed or failed write never leaves a ``step_*`` directory without ``COMPLETE``, so
:meth:`CheckpointStore.latest` only ever returns checkpoints that were fully written. ``COMPLETE``
also lists every file with its size and SHA-256: :func:`verify_checkpoint` checks them, so a checkpoint
damaged after it was written (truncated copy, full disk, bit rot) is named, never loaded;
:meth:`CheckpointStore.latest_verified` (``resume: auto``) skips it with a warning. Only the newest
``keep_last`` complete checkpoints are kept. With several ranks every rank writes its files into the
same temporary directory (a shared filesystem); rank 0 creates and commits it.

Nothing here unpickles: the marker is JSON, the RNG states are safetensors + JSON, and DeepSpeed's own
``.pt`` files are read through :func:`restricted_torch_load` (``weights_only=True`` with an allowlist of
the few DeepSpeed classes they hold).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)

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


class CheckpointError(ValueError):
    """A checkpoint that cannot be trusted: names the file that is missing, truncated or altered."""


def file_digests(directory: Path) -> dict[str, dict[str, Any]]:
    """``{relative path: {"bytes": size, "sha256": hex}}`` of every file under ``directory``."""
    out = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file() and p.name != COMPLETE):
        with open(path, "rb") as handle:
            digest = hashlib.file_digest(handle, "sha256").hexdigest()
        out[path.relative_to(directory).as_posix()] = {"bytes": path.stat().st_size, "sha256": digest}
    return out


def verify_checkpoint(checkpoint: str | Path) -> dict[str, Any]:
    """The metadata of a complete checkpoint whose files all match their recorded size and checksum.

    Raises :class:`CheckpointError` naming the first file that is missing, has another size, or
    another SHA-256 (and the checkpoint, when it has no ``COMPLETE`` marker or an unreadable one).
    """
    checkpoint = Path(checkpoint)
    try:
        meta = read_metadata(checkpoint)
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{checkpoint / COMPLETE}: unreadable marker: {err}") from None
    files = meta.get("files")
    if not isinstance(files, dict) or not files:
        raise CheckpointError(f"{checkpoint / COMPLETE}: lists no files with sizes and checksums")
    for name, want in files.items():
        path = checkpoint / name
        if not path.is_file():
            raise CheckpointError(f"{path}: missing from checkpoint {checkpoint.name}")
        size = path.stat().st_size
        if size != want["bytes"]:
            raise CheckpointError(
                f"{path}: {size} bytes, {want['bytes']} were written (truncated or altered)"
            )
        with open(path, "rb") as handle:
            if hashlib.file_digest(handle, "sha256").hexdigest() != want["sha256"]:
                raise CheckpointError(f"{path}: checksum differs from the one written (corrupt)")
    return meta


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
        """The newest complete checkpoint that passes :func:`verify_checkpoint`, warning for each newer
        one that does not; ``None`` when there is none. Raises when checkpoints exist but none verifies."""
        done = self.complete()
        for _, path in reversed(done):
            try:
                verify_checkpoint(path)
                return path
            except CheckpointError as err:
                log.warning("skipping checkpoint %s: %s", path.name, err)
        if done:
            raise CheckpointError(f"{self.root}: no checkpoint passes its checks (see the warnings above)")
        return None

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
        marker = staged / COMPLETE
        files = file_digests(staged)
        with open(marker, "w") as handle:
            json.dump({"step": step, **metadata, "files": files}, handle, indent=2)
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
        os.replace(path, aside / path.name)
    log.warning("train.resume=overwrite: moved the previous run's %s to %s", ", ".join(RUN_FILES), aside)
    return aside


def read_metadata(checkpoint: str | Path) -> dict[str, Any]:
    """The JSON metadata stored in a complete checkpoint's marker."""
    marker = Path(checkpoint) / COMPLETE
    if not marker.is_file():
        raise FileNotFoundError(f"{checkpoint} is not a complete checkpoint (no {COMPLETE} marker)")
    return json.loads(marker.read_text())


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
    import importlib

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
