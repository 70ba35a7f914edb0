"""Runs in child processes: SIGKILL at step n then resume == uninterrupted run; 2 ranks via torchrun end
with identical weights; the SLURM script with stand-in srun / scontrol trains 2 ranks, requeues on USR1
and finishes on the rerun."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from engine_helpers import REPO, TRAIN_AND_DUMP_WEIGHTS, run_python, tiny_config, tiny_overrides
from safetensors.torch import load_file

from pretrain_distill.core.checkpoint_trust import read_metadata
from pretrain_distill.core.config_loading import save_config
from pretrain_distill.core.metrics_log import read_metrics
from pretrain_distill.engine import train
from pretrain_distill.engine.checkpoint import CheckpointStore
from tests.launch import free_port, subprocess_env, torchrun

pytestmark = pytest.mark.slow

KILL_AT_STEP = """
import json, os, signal, sys
from pretrain_distill import cli
from pretrain_distill.core.metrics_log import MetricsLogger
original = MetricsLogger.log
def log_then_die(self, step, metrics):
    original(self, step, metrics)
    if step == int(sys.argv[2]):
        os.kill(os.getpid(), signal.SIGKILL)
MetricsLogger.log = log_then_die
sys.exit(cli.main(["train", *json.loads(sys.argv[1])]))
"""


def _step_losses(run_dir: Path) -> list[tuple[int, float, float]]:
    return [(r["step"], r["loss"], r["loss_mlm"]) for r in read_metrics(run_dir / "logs" / "metrics.jsonl")]


def test_sigkill_and_resume_reproduce_the_uninterrupted_run(tiny_teacher_dir, tiny_shards, tmp_path):
    # HS + MLM: exercises dropout RNG, the masking generator, loader position, optimizer and LR state.
    extra = [
        "objective.weights={hs: 1.0, mlm: 0.5}",
        "train.max_steps=8",
        "train.save_every=3",
        "train.export=false",
    ]
    reference = train(tiny_config(tiny_teacher_dir, tiny_shards, tmp_path / "reference", *extra))

    overrides = tiny_overrides(tiny_teacher_dir, tiny_shards, tmp_path / "killed", *extra)
    killed = run_python(KILL_AT_STEP, json.dumps(overrides), "5")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    store = CheckpointStore(tmp_path / "killed" / "checkpoints", 3)
    assert store.latest().name == "step_00000003"
    assert [s for s, *_ in _step_losses(tmp_path / "killed")] == [1, 2, 3, 4, 5]

    resumed = train(tiny_config(tiny_teacher_dir, tiny_shards, tmp_path / "killed", *extra))  # resume=auto

    want, got = _step_losses(reference), _step_losses(resumed)
    assert [s for s, *_ in got] == list(range(1, 9))
    torch.testing.assert_close(torch.tensor(got), torch.tensor(want), rtol=1e-5, atol=0)
    final = load_file(store.latest() / "student" / "model.safetensors")
    expected = load_file(reference / "checkpoints" / "step_00000008" / "student" / "model.safetensors")
    assert store.latest().name == "step_00000008" and set(final) == set(expected)
    for name in expected:
        torch.testing.assert_close(final[name], expected[name], rtol=1e-5, atol=1e-7, msg=name)


def test_two_ranks_via_torchrun_end_identical(tiny_teacher_dir, tiny_shards, tmp_path):
    out = tmp_path / "run"
    overrides = tiny_overrides(tiny_teacher_dir, tiny_shards, out, "train.max_steps=4", "train.save_every=2")
    script = tmp_path / "child.py"
    script.write_text(TRAIN_AND_DUMP_WEIGHTS)
    cmd = torchrun(str(script), json.dumps(overrides))
    done = subprocess.run(cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-4000:]
    rank0, rank1 = (torch.load(out / f"weights_rank{r}.pt") for r in (0, 1))
    assert set(rank0) == set(rank1)
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), name
    latest = CheckpointStore(out / "checkpoints", 3).latest()
    assert read_metadata(latest)["world_size"] == 2
    assert (latest / "rank_00000.safetensors").is_file() and (latest / "rank_00001.safetensors").is_file()
    assert [r["step"] for r in read_metrics(out / "logs" / "metrics.jsonl")] == [1, 2, 3, 4]
    saved = load_file(latest / "student" / "model.safetensors")
    torch.testing.assert_close(
        saved["bert.embeddings.word_embeddings.weight"], rank0["bert.embeddings.word_embeddings.weight"]
    )


def test_deepspeed_launcher_runs_the_cli_with_zero3_on_two_ranks(tiny_teacher_dir, tiny_shards, tmp_path):
    """The deepspeed launcher (it adds --local_rank=N to the CLI's arguments), ZeRO-3 partitioned over 2
    ranks: the student is gathered for the checkpoint's student/ and the export."""
    out = tmp_path / "run"
    overrides = tiny_overrides(tiny_teacher_dir, tiny_shards, out, "train.max_steps=3", "train.zero_stage=3")
    launcher = Path(sys.executable).with_name("deepspeed")
    cmd = [
        str(launcher),
        "--num_gpus",
        "2",
        "--master_port",
        str(free_port()),
        "--module",
        "pretrain_distill.cli",
        "train",
        *overrides,
    ]
    done = subprocess.run(cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    latest = CheckpointStore(out / "checkpoints", 3).latest()
    assert latest.name == "step_00000003" and read_metadata(latest)["world_size"] == 2
    from transformers import AutoModel

    model = AutoModel.from_pretrained(out / "export")
    assert model.embeddings.word_embeddings.weight.shape == (30522, 32)  # gathered, not a ZeRO-3 stub
    assert model.embeddings.word_embeddings.weight.abs().sum() > 0


FAKE_SRUN = """#!/bin/bash
# stand-in srun: start $SLURM_NTASKS local copies of the command with per-task SLURM variables
while [[ "$1" == --* ]]; do shift; done
pids=()
for ((i = 0; i < SLURM_NTASKS; i++)); do
    SLURM_PROCID=$i SLURM_LOCALID=$i "$@" &
    pids+=($!)
done
trap 'kill -USR1 "${pids[@]}" 2>/dev/null' USR1 TERM
status=0
for pid in "${pids[@]}"; do
    while true; do
        wait "$pid" && rc=0 || rc=$?
        kill -0 "$pid" 2>/dev/null || break
    done
    if [ "$rc" -gt "$status" ]; then status=$rc; fi
done
exit $status
"""

FAKE_SCONTROL = """#!/bin/bash
case "$1" in
    show) echo 127.0.0.1 ;;
    requeue) echo "requeue $2" >> "$SCONTROL_LOG" ;;
esac
"""


def test_sbatch_script_is_valid_bash():
    subprocess.run(["bash", "-n", str(REPO / "slurm" / "distill.sbatch")], check=True)


def test_sbatch_trains_two_ranks_requeues_on_usr1_and_finishes(tiny_teacher_dir, tiny_shards, tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in (("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL)):
        (bin_dir / name).write_text(body)
        (bin_dir / name).chmod(0o755)
    out = tmp_path / "run"
    config = save_config(tiny_config(tiny_teacher_dir, tiny_shards, out), tmp_path / "run.yaml")
    env = subprocess_env(
        PATH=f"{bin_dir}:{os.environ['PATH']}",
        PYTHON=sys.executable,
        SLURM_JOB_ID="4242",
        SLURM_NTASKS="2",
        SLURM_JOB_NODELIST="localhost",
        SLURM_CPUS_PER_TASK="1",
        MASTER_PORT=str(free_port()),
        SCONTROL_LOG=str(tmp_path / "scontrol.log"),
    )
    env.pop("OMP_NUM_THREADS")  # the script sets it from SLURM_CPUS_PER_TASK
    cmd = [
        "bash",
        str(REPO / "slurm" / "distill.sbatch"),
        str(config),
        "train.max_steps=24",
        "train.save_every=100",
        "train.log_every=1",
    ]

    job = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    deadline = time.monotonic() + 180
    while not read_metrics(out / "logs" / "metrics.jsonl") and time.monotonic() < deadline:
        time.sleep(0.05)
    job.send_signal(signal.SIGUSR1)  # what --signal=B:USR1@300 does before the time limit
    log, _ = job.communicate(timeout=180)
    assert job.returncode == 75, log[-4000:]
    assert (tmp_path / "scontrol.log").read_text() == "requeue 4242\n"
    first = CheckpointStore(out / "checkpoints", 3).latest()
    stopped_at = read_metadata(first)["state"]["step"]
    assert read_metadata(first)["world_size"] == 2 and 1 <= stopped_at < 24

    rerun = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert rerun.returncode == 0, rerun.stdout[-4000:] + rerun.stderr[-4000:]
    assert [r["step"] for r in read_metrics(out / "logs" / "metrics.jsonl")] == list(range(1, 25))
    assert read_metadata(CheckpointStore(out / "checkpoints", 3).latest())["state"]["step"] == 24
    assert (out / "export" / "config.json").is_file()
