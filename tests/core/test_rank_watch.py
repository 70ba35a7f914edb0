"""The rank watch on its own, two real processes over gloo: a stuck rank learns of a dead peer from the
watch thread (one line, exit 1, seconds); a peer on another host is judged by its beat alone; a peer
that ended normally, or that failed on an error of its own, is no lost rank."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.launch import free_port

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]

# argv: rank, port, scenario. Rank 0 runs the scenario's rank-0 part inside watching_ranks.
CHILD = """
import os, signal, sys, time
import torch.distributed as dist
from pretrain_distill.core import rank_watch
from pretrain_distill.core.distributed import detect_env
rank, scenario = int(sys.argv[1]), sys.argv[3]
os.environ.update(RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[2])
if scenario == "remote" and rank == 1:
    rank_watch._host = lambda: "elsewhere/boot"  # as if on another machine: no process id to check
dist.init_process_group("gloo")
with rank_watch.watching_ranks(detect_env()) as watch:
    watch.start()
    dist.barrier()
    if rank == 1:
        if scenario in ("stuck", "remote"):
            os.kill(os.getpid(), signal.SIGSTOP if scenario == "remote" else signal.SIGKILL)
        if scenario == "both-fail":
            raise ValueError("bad config value")
    else:
        if scenario == "both-fail":
            raise ValueError("bad config value")
        time.sleep(int(os.environ.get("SLEEP", "60")))  # a collective that never returns (NCCL)
print("done", flush=True)
"""


def _pair(scenario: str, sleep: int = 60):
    port = str(free_port())
    env = {
        k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")
    }
    env |= {"PYTHONPATH": str(REPO), "DISTILL_RANK_TIMEOUT": "4", "SLEEP": str(sleep)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, str(rank), port, scenario],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in (0, 1)
    ]
    return procs


def _finish(proc: subprocess.Popen, timeout: float) -> tuple[int, str, float]:
    start = time.monotonic()
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out + err, time.monotonic() - start


def test_a_stuck_rank_is_ended_by_the_watch_naming_the_dead_one():
    rank0, rank1 = _pair("stuck")
    assert rank1.wait(timeout=60) == -signal.SIGKILL
    code, output, seconds = _finish(rank0, timeout=60)
    lines = [line for line in output.splitlines() if "RankLostError" in line]
    assert code == 1 and seconds < 15 and "done" not in output
    assert len(lines) == 1 and lines[0].startswith(f"error: RankLostError: rank 1 (pid {rank1.pid} on ")


def test_a_rank_on_another_host_is_lost_when_its_beat_stops():
    rank0, rank1 = _pair("remote")
    try:
        code, output, seconds = _finish(rank0, timeout=60)
    finally:
        rank1.kill()
        rank1.wait()
    assert code == 1 and 4 <= seconds < 15, output[-2000:]
    assert "rank 1 (on elsewhere) has not been heard from for 4 s" in output


def test_a_peer_that_ended_or_failed_on_its_own_is_no_lost_rank():
    rank0, rank1 = _pair("ended", sleep=8)  # rank 1 ends normally; rank 0 works on for 8 s (> timeout)
    assert _finish(rank1, 60)[0] == 0
    code, output, _ = _finish(rank0, timeout=60)
    assert code == 0 and "done" in output and "RankLostError" not in output
    for proc in _pair("both-fail"):  # each keeps its own error
        code, output, seconds = _finish(proc, timeout=60)
        assert code == 1 and "ValueError: bad config value" in output and "RankLostError" not in output
        assert seconds < 15
