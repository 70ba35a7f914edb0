"""Checkpoint trust, the same for both stages: a checkpoint directory is complete only when it holds a
``COMPLETE`` marker, written last, that lists every file with its size and SHA-256.

:func:`verify_checkpoint` checks them, so a checkpoint damaged after it was written (truncated copy, full
disk, bit rot) is named, never loaded; :func:`newest_verified` (what ``resume: auto`` uses) skips such a
checkpoint with a warning and takes the newest one that passes. Nothing here unpickles: the marker is JSON.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pretrain_distill.core.files import atomic_write_json

log = logging.getLogger(__name__)

COMPLETE = "COMPLETE"


class CheckpointError(ValueError):
    """A checkpoint that cannot be trusted: names the file that is missing, truncated or altered."""


def _sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def file_digests(directory: Path) -> dict[str, dict[str, Any]]:
    """``{relative path: {"bytes": size, "sha256": hex}}`` of every file under ``directory``."""
    out = {}
    for path in sorted(p for p in Path(directory).rglob("*") if p.is_file() and p.name != COMPLETE):
        out[path.relative_to(directory).as_posix()] = {"bytes": path.stat().st_size, "sha256": _sha256(path)}
    return out


def mark_complete(directory: str | Path, metadata: dict[str, Any]) -> dict[str, Any]:
    """Write the ``COMPLETE`` marker of a fully written checkpoint: ``metadata`` plus every file's size
    and checksum (atomically, flushed to disk); returns what was written."""
    directory = Path(directory)
    record = {**metadata, "files": file_digests(directory)}
    atomic_write_json(directory / COMPLETE, record)
    return record


def read_metadata(checkpoint: str | Path) -> dict[str, Any]:
    """The JSON metadata stored in a complete checkpoint's marker."""
    marker = Path(checkpoint) / COMPLETE
    if not marker.is_file():
        raise FileNotFoundError(f"{checkpoint} is not a complete checkpoint (no {COMPLETE} marker)")
    return json.loads(marker.read_text())


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
        if _sha256(path) != want["sha256"]:
            raise CheckpointError(f"{path}: checksum differs from the one written (corrupt)")
    return meta


def newest_verified(checkpoints: Sequence[Path], where: str | Path) -> Path | None:
    """The last of ``checkpoints`` (complete ones, oldest first) that passes :func:`verify_checkpoint`,
    warning for each newer one that does not; ``None`` when there is none. Raises when checkpoints exist
    but none verifies."""
    for path in reversed(checkpoints):
        try:
            verify_checkpoint(path)
            return path
        except CheckpointError as err:
            log.warning("skipping checkpoint %s: %s", path.name, err)
    if checkpoints:
        raise CheckpointError(f"{where}: no checkpoint passes its checks (see the warnings above)")
    return None
