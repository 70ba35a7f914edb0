"""One run per output directory: a second ``train`` (or ``prepare``) on a directory a live process is
writing refuses in one line naming that process, before it writes anything.

The lock is ``<dir>/.lock``, a POSIX record lock (``lockf``; NFS supports it) held for the whole run,
the file naming its holder (host, process id, start time). The kernel releases it when the holder
dies, however it dies, so a lock left by a dead process (its file still names it) is simply taken over,
with a warning. A record lock belongs to the process: the loader or prepare workers it forks do not
hold it. A filesystem without locks (some Lustre mounts) runs unlocked, with a warning. In a job of
several ranks only rank 0 takes it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import time
import warnings
from pathlib import Path

from pretrain_distill.core.distributed import DistEnv, any_rank

LOCK_FILE = ".lock"


class OutputDirInUseError(ValueError):
    """Another live process holds the output directory's lock; the message names it."""


class RunLock:
    """The lock of one output directory (see the module docstring); ``release()`` gives it up."""

    def __init__(self, directory: str | Path, what: str) -> None:
        self.path = Path(directory) / LOCK_FILE
        self.what = what
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        """Take the lock, or raise :class:`OutputDirInUseError` naming its holder."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip()
            os.close(fd)
            if err.errno in (errno.EWOULDBLOCK, errno.EACCES):
                raise OutputDirInUseError(
                    f"{self.path.parent} is in use by {holder or 'another process'} (lock {self.path}): "
                    f"wait for it to end, or give this {self.what} another output directory"
                ) from None
            warnings.warn(
                f"{self.path}: cannot lock on this filesystem ({err.strerror}); running unlocked",
                stacklevel=2,
            )
            return self
        previous = os.pread(fd, 4096, 0).decode(errors="replace").strip()
        if previous:
            warnings.warn(
                f"{self.path.parent}: taking over the lock left by {previous}, which is gone", stacklevel=2
            )
        since = time.strftime("%Y-%m-%d %H:%M:%S")
        holder = f"{self.what} pid {os.getpid()} on host {socket.gethostname()} (since {since})"
        os.ftruncate(fd, 0)
        os.pwrite(fd, holder.encode(), 0)
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        """Empty the lock file (an empty one is no stale lock) and unlock it; idempotent."""
        if self._fd is None:
            return
        os.ftruncate(self._fd, 0)
        os.close(self._fd)  # closing the descriptor releases the lock
        self._fd = None

    def __del__(self) -> None:  # an abandoned lock (the object dropped without release) is released
        with contextlib.suppress(Exception):  # (at interpreter exit, the kernel releases it anyway)
            self.release()


def lock_output_dir(directory: str | Path, what: str, dist: DistEnv) -> RunLock:
    """Rank 0 takes ``directory``'s lock; every rank raises :class:`OutputDirInUseError` when it is held
    (collective: every rank calls it at the same point). Returns the lock (inert on other ranks)."""
    lock = RunLock(directory, what)
    refusal = None
    if dist.is_main:
        try:
            lock.acquire()
        except OutputDirInUseError as err:
            refusal = err
    if any_rank(refusal is not None):
        raise refusal or OutputDirInUseError(
            f"{directory} is in use by another run (rank 0 names it); give this {what} another output directory"
        )
    return lock
