"""Faults of one rank, 2 CPU ranks (gloo): kill -9 one rank of ``pretrain-distill train`` and the other
ends in bounded time with one line naming the lost rank, under torchrun (which tears the job down
itself) and under a launcher that does not (two processes started as ``srun`` starts them); rerunning
resumes to the losses and final weights of an uninterrupted 2-rank run. Two runs on one output
directory: the second refuses in one line naming the first."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from engine_helpers import REPO, run_python, tiny_overrides
from safetensors.torch import load_file

from pretrain_distill.core.metrics_log import read_metrics
from pretrain_distill.engine.checkpoint import CheckpointStore
from tests.launch import free_port, subprocess_env, torchrun

pytestmark = pytest.mark.slow

# argv: JSON overrides, the rank to kill (-1: none), the step after which it is killed
KILL_ONE_RANK = """
import json, os, signal, sys
from pretrain_distill import cli
from pretrain_distill.engine.trainer import Trainer
victim, after = int(sys.argv[2]), int(sys.argv[3])
step = Trainer._train_step
def step_then_die(self, batches, interval):
    step(self, batches, interval)
    if self.dist.rank == victim and self.state.step == after:
        os.kill(os.getpid(), signal.SIGKILL)  # kill -9
Trainer._train_step = step_then_die
sys.exit(cli.main(["train", *json.loads(sys.argv[1])]))
"""
STEPS = 8
# the CLI's line when a failing collective revealed it, the watch's when the main thread was stuck
LOST = re.compile(r"error: RankLostError: rank (\d) \(pid \d+ on [^)]+\) has died")


def _torchrun(script: Path, overrides: list[str], victim: int, after: int) -> subprocess.CompletedProcess:
    cmd = torchrun(str(script), json.dumps(overrides), str(victim), str(after))
    env = subprocess_env(DISTILL_RANK_TIMEOUT="10")
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def _like_srun(script: Path, overrides: list[str], victim: int, after: int) -> list[tuple[int, str, float]]:
    """Two ranks started as srun starts them (SLURM variables, nobody tearing the job down): each
    rank's (exit code, stderr, seconds after the victim died or the run began)."""
    port = str(free_port())
    procs = []
    for rank in (0, 1):
        env = subprocess_env(SLURM_PROCID=str(rank), SLURM_LOCALID=str(rank), SLURM_NTASKS="2")
        env |= {"SLURM_JOB_NODELIST": "127.0.0.1", "MASTER_PORT": port, "DISTILL_RANK_TIMEOUT": "10"}
        cmd = [sys.executable, str(script), json.dumps(overrides), str(victim), str(after)]
        procs.append(subprocess.Popen(cmd, cwd=REPO, env=env, stderr=subprocess.PIPE, text=True))
    results, died = [], None
    while any(p.poll() is None for p in procs):
        if died is None and procs[victim].poll() is not None:
            died = time.monotonic()
        time.sleep(0.1)
    for p in procs:
        results.append((p.returncode, p.stderr.read(), time.monotonic() - (died or time.monotonic())))
    return results


def _run(out: Path) -> tuple[list[tuple[int, float]], dict[str, torch.Tensor]]:
    final = CheckpointStore(out / "checkpoints", 3).latest()
    assert final.name == f"step_{STEPS:08d}"
    losses = [(r["step"], r["loss"]) for r in read_metrics(out / "logs" / "metrics.jsonl")]
    return losses, load_file(final / "student" / "model.safetensors")


def test_a_killed_rank_is_named_and_the_rerun_resumes_exactly(tiny_teacher_dir, tiny_shards, tmp_path):
    script = tmp_path / "child.py"
    script.write_text(KILL_ONE_RANK)
    extra = (f"train.max_steps={STEPS}", "train.save_every=2", "train.export=false", "data.num_workers=1")
    reference = tiny_overrides(tiny_teacher_dir, tiny_shards, tmp_path / "reference", *extra)
    assert _torchrun(script, reference, victim=-1, after=0).returncode == 0

    overrides = tiny_overrides(tiny_teacher_dir, tiny_shards, tmp_path / "killed", *extra)
    # 1. torchrun: rank 1 killed after step 3; rank 0 names it, torchrun ends the job
    killed = _torchrun(script, overrides, victim=1, after=3)
    assert killed.returncode != 0 and LOST.search(killed.stderr).group(1) == "1", killed.stderr[-3000:]
    assert CheckpointStore(tmp_path / "killed" / "checkpoints", 3).latest().name == "step_00000002"
    # 2. the rerun, started as srun starts it, resumes; now rank 0 (the rendezvous host) is killed after
    #    step 5: rank 1 names it and stops within seconds, though no launcher ends it
    (rank0, _, _), (rank1, err1, after_death) = _like_srun(script, overrides, victim=0, after=5)
    assert rank0 == -9 and rank1 == 1 and after_death < 20, err1[-3000:]
    lines = [line for line in err1.splitlines() if "error:" in line]
    assert len(lines) == 1 and LOST.search(lines[0]).group(1) == "0", err1[-3000:]
    assert CheckpointStore(tmp_path / "killed" / "checkpoints", 3).latest().name == "step_00000004"
    # 3. the last rerun ends the run: the losses and the final weights of the uninterrupted run
    assert _torchrun(script, overrides, victim=-1, after=0).returncode == 0
    (want, expected), (got, final) = _run(tmp_path / "reference"), _run(tmp_path / "killed")
    assert [s for s, _ in got] == list(range(1, STEPS + 1))
    torch.testing.assert_close(torch.tensor(got), torch.tensor(want), rtol=1e-5, atol=0)
    for name in expected:
        torch.testing.assert_close(final[name], expected[name], rtol=1e-5, atol=1e-7, msg=name)


SECOND_RUN = """
import json, sys
from pretrain_distill import cli
sys.exit(cli.main(["train", *json.loads(sys.argv[1])]))
"""


def test_a_second_run_on_the_same_output_dir_refuses_naming_the_first(
    tiny_teacher_dir, tiny_shards, tmp_path
):
    """The first run is still training (held at its first log line); the second refuses in one line
    naming the first's process, writes nothing; a lock left by a killed run is taken over with a warning."""
    out = tmp_path / "run"
    overrides = tiny_overrides(tiny_teacher_dir, tiny_shards, out, "train.max_steps=2", "train.export=false")
    held = tmp_path / "held"
    hold = (
        "import time, pathlib\nfrom pretrain_distill.core.metrics_log import MetricsLogger\n"
        "log = MetricsLogger.log\n"
        "def slow(self, step, metrics):\n    log(self, step, metrics)\n"
        f"    pathlib.Path({str(held)!r}).touch()\n    time.sleep(600)\n"
        "MetricsLogger.log = slow\n" + SECOND_RUN
    )
    first = subprocess.Popen(
        [sys.executable, "-c", hold, json.dumps(overrides)],
        cwd=REPO,
        env=subprocess_env(),
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 180
        while not held.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        before = sorted(p.name for p in out.rglob("*"))
        second = run_python(SECOND_RUN, json.dumps(overrides))
        assert second.returncode == 2, second.stderr[-3000:]
        line = second.stderr.strip().splitlines()[-1]
        assert f"is in use by train pid {first.pid} on host " in line and "another output directory" in line
        assert sorted(p.name for p in out.rglob("*")) == before
    finally:
        first.kill()  # kill -9: its lock file still names it
        first.wait()
    assert f"pid {first.pid}" in (out / ".lock").read_text()
    rerun = run_python(SECOND_RUN, json.dumps(overrides))
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"taking over the lock left by train pid {first.pid}" in rerun.stderr
    assert (out / ".lock").read_text() == ""  # released at the end
