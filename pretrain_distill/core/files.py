"""Atomic file and directory writes: a reader sees the old content or the new, never a part.

Everything is written under a temporary name beside its target (same filesystem), flushed to disk and
renamed over the target in one step. Two ways to publish a directory: :func:`publish_dir` replaces what
is there (checkpoints; exports through :func:`staged_dir`, after :func:`check_replaceable`);
:func:`fill_dir_once` keeps the first complete copy when several processes fill the same cache at once
(the others discard theirs and use it).
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


def fsync_dir(path: str | Path) -> None:
    """Flush a directory's entries (a rename inside it) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _temp_sibling(path: Path, directory: bool) -> Path:
    """A fresh temporary name beside ``path`` (hidden, unique per process and call)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{path.name}.tmp-"
    if directory:
        return Path(tempfile.mkdtemp(prefix=prefix, dir=path.parent))
    fd, name = tempfile.mkstemp(prefix=prefix, dir=path.parent)
    os.close(fd)
    return Path(name)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary file path beside ``path``; when the block ends without an error, the file
    written there (flushed to disk) replaces ``path`` in one rename. On an error it is removed."""
    path = Path(path)
    tmp = _temp_sibling(path, directory=False)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def atomic_write_json(path: str | Path, data: Any) -> Path:
    """Write ``data`` as indented JSON (with a final newline) to ``path`` atomically."""
    return atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def publish_dir(staged: str | Path, target: str | Path) -> Path:
    """Move the complete directory ``staged`` to ``target``. An existing ``target`` is moved aside,
    replaced by one rename, then deleted: at every moment ``target`` is either the old directory or the
    new one. When several processes publish to one ``target`` at once, each publication is whole and the
    last one stays. (File contents are not flushed one by one: checkpoints carry checksums for that.)"""
    staged, target = Path(staged), Path(target)
    fsync_dir(staged)
    aside = _temp_sibling(target, directory=True)
    try:
        for attempt in itertools.count():
            with contextlib.suppress(FileNotFoundError):
                os.replace(target, aside / str(attempt))
            try:
                os.replace(staged, target)
                break
            except OSError as err:  # another process published between the two renames: move it aside too
                if err.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
        fsync_dir(target.parent)
    finally:
        shutil.rmtree(aside, ignore_errors=True)
    return target


def check_replaceable(out: Path, marker: str, what: str) -> None:
    """Refuse an ``out`` that exists and is not an earlier ``what`` (a non-empty directory without the file
    ``marker`` every such output holds, or not a directory): publishing would delete what is there."""
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / marker).is_file())):
        raise FileExistsError(f"--out {out}: exists and is not an earlier {what}; choose another directory")


@contextlib.contextmanager
def staged_dir(target: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary directory beside ``target`` (unique per call, so concurrent writers never
    share one); when the block ends without an error it is published as ``target`` (:func:`publish_dir`),
    otherwise removed. A killed process leaves it behind, hidden (``.<target>.tmp-*``)."""
    staged = _temp_sibling(Path(target), directory=True)
    try:
        yield staged
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    publish_dir(staged, target)


def fill_dir_once(target: str | Path, fill: Callable[[Path], None]) -> Path:
    """Fill a temporary directory with ``fill(tmp)`` and publish it as ``target`` unless another process
    published one first: the first complete copy wins, later ones are discarded, and nobody ever deletes
    a ``target`` another process may be reading. Returns ``target``."""
    target = Path(target)
    if target.is_dir() and any(target.iterdir()):
        return target
    tmp = _temp_sibling(target, directory=True)
    try:
        fill(tmp)
        fsync_dir(tmp)
        try:
            os.rename(tmp, target)  # refused when another process's complete copy is already there
        except OSError:
            if not (target.is_dir() and any(target.iterdir())):
                raise
        else:
            fsync_dir(target.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
