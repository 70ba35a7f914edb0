"""Faults of one rank: when another rank of the job dies (kill -9, out of memory, its node lost), this
rank stops in bounded time with one line naming it, instead of hanging in a collective until its
timeout (NCCL: 30 minutes) or failing with a transport message that names only an address (gloo).

Every rank registers its host and process id in the job's rendezvous store and beats there once a
second from a daemon thread, which also watches the others. A rank is gone when it never said it
finished and either its process no longer exists (ranks on this host: known at once) or its beat has
not moved for ``DISTILL_RANK_TIMEOUT`` seconds (default 30; ranks on other hosts); the store itself
becoming unreachable means its host (rank 0, or the launcher) is gone.

- A collective that fails (gloo raises as soon as a peer's connection closes) ends in
  :meth:`RankWatch.explain`: it waits for the verdict and turns the error into :class:`RankLostError`,
  or keeps it when every peer is alive or ended on an error of its own (that rank says why).
- A collective that hangs (NCCL) is ended by the thread: once it finds a rank gone and the main thread
  has not reported it within a few seconds, it prints the line and ends the process (exit code 1).

torchrun also stops the other workers when one dies (SIGTERM, then SIGKILL) and names the failed rank
in its summary; this covers launchers that do not (``srun``, processes started by hand).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import torch

from pretrain_distill.core.distributed import DistEnv
from pretrain_distill.core.errors import RunStopped

TIMEOUT_ENV = "DISTILL_RANK_TIMEOUT"
DEFAULT_TIMEOUT = 30.0  # seconds without a beat after which a rank on another host is gone
INTERVAL = 1.0  # seconds between two beats
EXIT_RANK_LOST = 1


class RankLostError(RuntimeError):
    """Another rank of the job is gone; the message names it."""


def _host() -> str:
    """This machine: host name and boot id (two containers may share a host name)."""
    boot = Path("/proc/sys/kernel/random/boot_id")
    return f"{socket.gethostname()}/{boot.read_text().strip() if boot.is_file() else ''}"


def _process_alive(pid: int) -> bool:
    """Whether process ``pid`` of this host still runs (a zombie, killed but not yet reaped, does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return state not in ("Z", "X")


class RankWatch:
    """Beats for this rank and watches the others (see the module docstring); inert for one process."""

    def __init__(self, env: DistEnv, timeout: float | None = None) -> None:
        self.env = env
        self.timeout = timeout if timeout is not None else float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT))
        self._prefix = f"distill/ranks/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/"
        self._store: torch.distributed.Store | None = None
        self._peers: dict[int, dict] = {}  # rank -> {"who", "pid" (on this host), "beat", "seen", "done"}
        self._lock = threading.Lock()
        self._claimed = False  # the lost rank has been reported (by the main thread or the watcher)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._store_dead = False
        # The rank whose process hosts the store: rank 0, unless torchrun's agent does.
        self._store_rank = None if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True" else 0

    def _key(self, kind: str, rank: int) -> str:
        return f"{self._prefix}{kind}/{rank}"

    def start(self) -> RankWatch:
        """Register this rank, read the others' registrations and start beating (idempotent)."""
        if self.env.world_size == 1 or self._thread is not None:
            return self
        self._store = torch.distributed.TCPStore(
            self.env.master_addr,
            self.env.master_port,
            is_master=False,
            timeout=timedelta(seconds=max(self.timeout, 10.0)),
        )
        me = {"host": _host(), "pid": os.getpid()}
        self._store.set(self._key("who", self.env.rank), json.dumps(me))
        now = time.monotonic()
        for rank in range(self.env.world_size):
            if rank != self.env.rank:
                who = json.loads(self._store.get(self._key("who", rank)))
                local = who["host"] == me["host"]
                pid = who["pid"] if local else None
                self._peers[rank] = {"pid": pid, "beat": -1, "seen": now, "who": who, "done": False}
        self._thread = threading.Thread(target=self._run, name="rank-watch", daemon=True)
        self._thread.start()
        return self

    def stop(self, failed: bool = False) -> None:
        """Say this rank ended (on an error of its own when ``failed``), then stop beating."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._say_done("error" if failed else "ok")
        self._thread = None

    # ------------------------------------------------------------------------------------ the store

    def _store_op(self, op: str, *args):
        """One store call; None once the store has failed (its host is gone: no call is tried again,
        each would print torch's warning)."""
        if self._store_dead:
            return None
        try:
            return getattr(self._store, op)(*args)
        except Exception:  # any failure of the store: its host is gone
            self._store_dead = True
            return None

    def _say_done(self, how: str) -> None:
        self._store_op("set", self._key("done", self.env.rank), how)

    def _done(self, rank: int) -> bool:
        """Whether ``rank`` said it ended (remembered: a rank that said so never comes back)."""
        peer = self._peers[rank]
        peer["done"] = peer["done"] or bool(self._store_op("check", [self._key("done", rank)]))
        return peer["done"]

    # ------------------------------------------------------------------------------------ verdicts

    def _lost(self) -> tuple[str, bool] | None:
        """A line naming the gone rank(s) and whether that is certain (a process seen dead, a beat silent
        for the timeout) rather than a store that stopped answering (its host may have ended normally a
        moment ago); None while every peer is alive or ended on its own. Processes on this host are
        checked first; a dead one is asked whether it ended on its own, unless it hosted the store (gone
        with it: asking would only fail)."""
        now, gone = time.monotonic(), []
        for rank, peer in self._peers.items():
            host = peer["who"]["host"].split("/")[0]
            if peer["done"] or peer["pid"] is None or _process_alive(peer["pid"]):
                continue
            if rank == self._store_rank or not self._done(rank):
                gone.append(f"rank {rank} (pid {peer['pid']} on {host}) has died")
        for rank, peer in self._peers.items():
            if gone or self._done(rank):
                continue
            beat = self._store_op("add", self._key("beat", rank), 0)
            if beat is not None and beat != peer["beat"]:
                peer["beat"], peer["seen"] = beat, now
            if not self._store_dead and now - peer["seen"] > self.timeout:
                host = peer["who"]["host"].split("/")[0]
                gone.append(f"rank {rank} (on {host}) has not been heard from for {self.timeout:g} s")
        if gone:
            line = f"{'; '.join(gone)}: rank {self.env.rank} stops too; rerun the same command to resume"
            return line + " from the last complete checkpoint", True
        if self._store_dead:
            return (
                f"the job's rendezvous store at {self.env.master_addr}:{self.env.master_port} stopped "
                "answering: the process hosting it (rank 0 or the launcher) is gone",
                False,
            )
        return None

    def _claim(self) -> bool:
        with self._lock:
            first, self._claimed = not self._claimed, True
            return first

    def _run(self) -> None:
        """The daemon thread: beat, watch; end the process if a rank is gone and nobody reported it."""
        lost_since: float | None = None
        while not self._stop.wait(INTERVAL):
            with self._lock:
                claimed = self._claimed
            verdict = None if claimed else self._lost()
            if verdict is None:
                lost_since = None
                self._store_op("add", self._key("beat", self.env.rank), 1)
                continue
            line, certain = verdict
            lost_since = lost_since or time.monotonic()
            # The main thread usually learns of it from a failing collective and reports it itself; a
            # store that stopped answering may be a rank 0 that ended normally a moment before us.
            if time.monotonic() - lost_since >= (3 * INTERVAL if certain else self.timeout) and self._claim():
                print(f"error: {RankLostError.__name__}: {line}", file=sys.stderr, flush=True)
                os._exit(EXIT_RANK_LOST)

    def explain(self, error: BaseException) -> BaseException:
        """``error`` as :class:`RankLostError` when another rank turns out to be gone (waiting up to the
        timeout for its beat), else ``error`` itself. Tells the others this rank ended on an error."""
        if self._thread is None:
            return error
        deadline = time.monotonic() + self.timeout + 2 * INTERVAL
        baseline = {rank: peer["beat"] for rank, peer in self._peers.items()}
        verdict = self._lost()
        if verdict is None:  # (a dead rank may have hosted the store: no call to it then)
            self._say_done("error")
        while verdict is None:
            alive = all(
                peer["beat"] != baseline[rank] or self._done(rank) for rank, peer in self._peers.items()
            )
            if alive or time.monotonic() > deadline:
                return error
            time.sleep(INTERVAL / 4)
            verdict = self._lost()
        return RankLostError(verdict[0]) if self._claim() else error


@contextlib.contextmanager
def watching_ranks(env: DistEnv) -> Iterator[RankWatch]:
    """Watch the other ranks for the block (call ``start()`` once the process group exists); an error
    inside it that another rank's death caused leaves as :class:`RankLostError`."""
    watch = RankWatch(env)
    try:
        yield watch
    except RunStopped:  # an agreed stop (preemption): every rank stops on its own, nobody is lost
        watch.stop(failed=True)
        raise
    except Exception as err:
        explained = watch.explain(err)
        watch.stop(failed=True)
        if explained is err:
            raise
        raise explained from err
    watch.stop()
