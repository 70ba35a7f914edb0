"""Fault injection: whatever kills or damages a run, nothing is lost and nothing is mixed.

Each case runs the tiny distillation (HS + MLM: dropout, masking, loader position, optimizer and LR
state all matter) on shards split into several files, under 0, 2 or 3 loader workers (with
``prefetch_factor``), is interrupted in a child process (SIGKILL at a step, SIGKILL inside a checkpoint
write, SIGTERM / SIGUSR1 preemption) or damaged (truncated / garbage checkpoint files and shards), and
is then resumed: the losses of every step and the final weights must equal those of an uninterrupted
run bit for bit, or the error must be the one line that names the damaged file.

The default cases draw their kill steps from a seeded generator (the seed is in each failure message).
``PD_FAULT_ROUNDS=N`` adds N longer randomised rounds (worker count, fault kind, step, a second fault
in the resumed run), e.g. ``PD_FAULT_ROUNDS=20 pytest tests/engine/test_engine_faults.py -k random``.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
from engine_helpers import PYTHON, REPO, tiny_config, tiny_overrides
from safetensors.torch import load_file

from pretrain_distill import cli
from pretrain_distill.core.checkpoint_trust import CheckpointError, read_metadata
from pretrain_distill.core.errors import ConfigError
from pretrain_distill.core.metrics_log import read_metrics
from pretrain_distill.engine import train
from pretrain_distill.engine.checkpoint import CheckpointStore
from pretrain_distill.engine.signals import EXIT_PREEMPTED
from pretrain_distill.export import export_run
from tests.launch import subprocess_env

pytestmark = pytest.mark.slow

SEED = int(os.environ.get("PD_FAULT_SEED", "1234"))
ROUNDS = int(os.environ.get("PD_FAULT_ROUNDS", "0"))
STEPS = 8

# A child run with one fault: at "log" (after step N's metrics line), "save" (inside the checkpoint
# write of step N: DeepSpeed's files written, ours not) or "commit" (all files written, no COMPLETE
# marker yet) it sends itself SIGKILL, SIGTERM or SIGUSR1.
CHILD = """
import json, os, signal, sys
from pretrain_distill import cli
from pretrain_distill.core import metrics_log as metrics_logging
from pretrain_distill.engine import checkpoint, state
fault = json.loads(sys.argv[2])
def trip(where, step):
    if where == fault["at"] and step == fault["step"]:
        if fault["signal"] == "TERM_GROUP":  # as SLURM / kill of a job: every process, workers too
            os.killpg(0, signal.SIGTERM)
        else:
            os.kill(os.getpid(), getattr(signal, "SIG" + fault["signal"]))
log = metrics_logging.MetricsLogger.log
def log_then_trip(self, step, metrics):
    log(self, step, metrics)
    trip("log", step)
metrics_logging.MetricsLogger.log = log_then_trip
save_rng = state.save_rng
def trip_then_save_rng(path):
    trip("save", int(path.parent.name.rsplit("_", 1)[1]))
    save_rng(path)
state.save_rng = trip_then_save_rng
commit = checkpoint.CheckpointStore.commit
def trip_then_commit(self, step, metadata):
    trip("commit", step)
    return commit(self, step, metadata)
checkpoint.CheckpointStore.commit = trip_then_commit
sys.exit(cli.main(["train", *json.loads(sys.argv[1])]))
"""


def _extra(workers: int, *more: str) -> list[str]:
    prefetch = [f"data.prefetch_factor={1 + workers}"] if workers else []
    return [
        "objective.weights={hs: 1.0, mlm: 0.5}",
        f"train.max_steps={STEPS}",
        "train.save_every=3",
        "train.keep_last=3",
        "train.export=false",
        "data.shuffle_buffer=8",
        f"data.num_workers={workers}",
        *prefetch,
        *more,
    ]


@pytest.fixture(scope="module")
def split_shards(movie_shards) -> Path:
    """The engine tests' 6 KB of real text as 6 shards (several per loader worker)."""
    out, manifest = movie_shards("fault_shards", 6000, shard_chars=1000, block_size=4)
    assert len(manifest["shards"]) >= 5
    return out


class Runs:
    """Uninterrupted reference runs (one per setting) and interrupted copies of them."""

    def __init__(self, teacher: Path, shards: Path, root: Path) -> None:
        self.teacher, self.shards, self.root = teacher, shards, root
        self._references: dict[tuple, tuple[list, dict]] = {}

    def overrides(self, out: Path, workers: int, *more: str) -> list[str]:
        return tiny_overrides(self.teacher, self.shards, out, *_extra(workers, *more))

    def resume(self, out: Path, workers: int, *more: str) -> Path:
        return train(tiny_config(self.teacher, self.shards, out, *_extra(workers, *more)))

    def reference(self, workers: int, *more: str) -> tuple[list, dict]:
        key = (workers, *more)
        if key not in self._references:
            out = self.root / f"reference_{len(self._references)}"
            self._references[key] = outcome(self.resume(out, workers, *more))
            if key == (0,):
                shutil.copytree(out, self.root / "reference_0_workers")
        return self._references[key]

    def child(self, out: Path, workers: int, at: str, step: int, sig: str = "KILL", *more: str):
        """Run a child with the fault; in its own process group (its loader workers with it)."""
        fault = json.dumps({"at": at, "step": step, "signal": sig})
        cmd = [PYTHON, "-c", CHILD, json.dumps(self.overrides(out, workers, *more)), fault]
        return subprocess.run(
            cmd,
            cwd=REPO,
            env=subprocess_env(),
            capture_output=True,
            text=True,
            timeout=300,
            start_new_session=True,
        )


def outcome(run_dir: Path) -> tuple[list, dict]:
    """(every step's logged losses, the final student weights) of a finished run."""
    losses = [
        (r["step"], r["loss"], r["loss_mlm"], r["loss_hs"])
        for r in read_metrics(run_dir / "logs" / "metrics.jsonl")
    ]
    latest = CheckpointStore(run_dir / "checkpoints", 3).latest()
    assert read_metadata(latest)["state"]["step"] == STEPS
    return losses, load_file(latest / "student" / "model.safetensors")


def assert_same(got: tuple[list, dict], want: tuple[list, dict], context: str) -> None:
    assert [s for s, *_ in got[0]] == list(range(1, STEPS + 1)), context
    assert got[0] == want[0], f"{context}: losses differ from the uninterrupted run"
    assert set(got[1]) == set(want[1])
    for name, tensor in want[1].items():
        assert got[1][name].equal(tensor), f"{context}: {name} differs from the uninterrupted run"


@pytest.fixture(scope="module")
def runs(tiny_teacher_dir, split_shards, tmp_path_factory) -> Runs:
    return Runs(tiny_teacher_dir, split_shards, tmp_path_factory.mktemp("faults"))


# 0 workers: the preemption case below (and test_engine_multiprocess)
@pytest.mark.parametrize("workers", [2, 3])
def test_sigkill_at_a_random_step_then_resume_is_exact(runs, tmp_path, workers):
    step = random.Random(SEED + workers).randint(1, STEPS - 1)
    context = f"workers={workers}, SIGKILL after step {step} (PD_FAULT_SEED={SEED})"
    killed = runs.child(tmp_path / "run", workers, "log", step)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert_same(outcome(runs.resume(tmp_path / "run", workers)), runs.reference(workers), context)


# TERM_GROUP: SIGTERM to every process of the run, loader workers too (as a job's preemption does);
# with 3 micro-batches per step and 1 batch prefetched per worker, the step in progress needs workers
# that outlive the signal.
@pytest.mark.parametrize(
    "sig,workers,more",
    [
        ("TERM", 0, ()),
        ("USR1", 2, ()),
        ("TERM_GROUP", 2, ("train.grad_accum=3", "data.prefetch_factor=1")),
    ],
)
def test_preemption_signal_then_resume_is_exact(runs, tmp_path, sig, workers, more):
    step = random.Random(SEED + 10 + workers).randint(1, STEPS - 2)
    context = f"workers={workers}, SIG{sig} after step {step} (PD_FAULT_SEED={SEED})"
    stopped = runs.child(tmp_path / "run", workers, "log", step, sig, *more)
    assert stopped.returncode == EXIT_PREEMPTED, stopped.stderr[-3000:]
    latest = CheckpointStore(tmp_path / "run" / "checkpoints", 3).latest()
    assert read_metadata(latest)["state"]["step"] == step + 1  # the step in progress is finished, saved
    resumed = runs.resume(tmp_path / "run", workers, *more)
    assert_same(outcome(resumed), runs.reference(workers, *more), context)


# "commit" (all files written, no marker yet): in the randomised rounds
@pytest.mark.parametrize("at", ["save"])
def test_sigkill_inside_a_checkpoint_write_loses_nothing(runs, tmp_path, at):
    killed = runs.child(tmp_path / "run", 2, at, 6)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    store = CheckpointStore(tmp_path / "run" / "checkpoints", 3)
    assert [s for s, _ in store.complete()] == [3]  # the half-written step 6 is not a checkpoint
    assert list((tmp_path / "run" / "checkpoints").glob(".tmp-step_00000006"))
    assert_same(outcome(runs.resume(tmp_path / "run", 2)), runs.reference(2), f"SIGKILL in {at} of step 6")


@pytest.fixture(scope="module")
def killed_at_7(runs, tmp_path_factory) -> Path:
    """A 2-worker run killed after step 7: complete checkpoints at steps 3 and 6."""
    out = tmp_path_factory.mktemp("killed") / "run"
    killed = runs.child(out, 2, "log", 7)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    return out


@pytest.mark.parametrize(
    "target,damage",
    [
        ("student/model.safetensors", "truncate"),
        ("mp_rank_00_model_states.pt", "garbage"),
        ("loader.json", "garbage"),
    ],
)
def test_damaged_newest_checkpoint_is_skipped_with_a_warning(
    runs, killed_at_7, tmp_path, caplog, target, damage
):
    run = tmp_path / "run"
    shutil.copytree(killed_at_7, run)
    bad = run / "checkpoints" / "step_00000006" / target
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2] if damage == "truncate" else bytes(len(data)))
    with pytest.raises(CheckpointError, match=str(bad)):
        export_run(run, checkpoint=run / "checkpoints" / "step_00000006")  # an explicit checkpoint: named
    with caplog.at_level("WARNING"):
        resumed = runs.resume(run, 2)
    assert str(bad) in caplog.text and "skipping checkpoint step_00000006" in caplog.text
    assert_same(outcome(resumed), runs.reference(2), f"{damage} {target}, resumed from step 3")


def _first_shard(shards: Path) -> str:
    """The shard the first batch of epoch 0 comes from (for 0 workers and for worker 0 of 2)."""
    from pretrain_distill.data import plan
    from pretrain_distill.data.manifest import load_manifest

    manifest = load_manifest(shards)
    entries = [(s["language"], s["sequences"]) for s in manifest["shards"]]
    return manifest["shards"][plan.epoch_pieces(entries, 1.0, 42, 0)[0].shard]["name"]


@pytest.mark.parametrize("damage", ["garbage", "empty", "missing", "truncate"])
def test_bad_shard_is_one_line_under_workers(runs, tmp_path, capfd, damage):
    shards = tmp_path / "shards"
    shutil.copytree(runs.shards, shards)
    bad = shards / _first_shard(shards)
    data = bad.read_bytes()
    if damage == "missing":
        bad.unlink()
    else:
        bad.write_bytes(
            {"garbage": b"\x17junk" * 999, "empty": b"", "truncate": data[: len(data) // 3]}[damage]
        )
    lines = []
    for workers in (0, 2):
        overrides = tiny_overrides(runs.teacher, shards, tmp_path / f"run{workers}", *_extra(workers))
        assert cli.main(["train", *overrides]) == 2  # bad input: exit 2
        err = capfd.readouterr().err
        assert "Traceback" not in err, err[-3000:]
        lines.append([line for line in err.splitlines() if line.startswith("pretrain-distill train: error:")])
    assert len(lines[0]) == len(lines[1]) == 1
    assert lines[0] == lines[1] and f"shard {bad}: " in lines[0][0]


def test_a_run_directory_belongs_to_one_run(runs, tmp_path):
    run = tmp_path / "run"
    runs.reference(0)
    shutil.copytree(runs.root / "reference_0_workers", run)
    with pytest.raises(
        ConfigError, match=f"train.output_dir={run} holds checkpoints.*train.resume=overwrite"
    ):
        runs.resume(run, 0, "train.resume=none")
    runs.resume(run, 0, "train.resume=overwrite", "train.max_steps=2", "train.save_every=1")
    assert [s for s, _ in CheckpointStore(run / "checkpoints", 3).complete()] == [1, 2]
    (aside,) = run.glob("replaced-*")
    assert [s for s, _ in CheckpointStore(aside / "checkpoints", 3).complete()] == [3, 6, 8]
    assert [r["step"] for r in read_metrics(run / "logs" / "metrics.jsonl")] == [1, 2]
    assert "2 optimizer steps" in (export_run(run) / "README.md").read_text()  # the new run's model


@pytest.mark.parametrize(
    "change,named",
    [
        ("student.layers=3", "student.shape: [2, 2, 32, 64] -> [3, 2, 32, 64]"),
        ("objective.mapping=last", "objective.mapping: uniform -> last"),
        (
            "objective.weights={hs: 1.0, mlm: 0.5, minilmv2: 1.0}",
            "objective.weights.minilmv2: (unset) -> 1.0",
        ),
        ("data.mlm_probability=0.3", "data.mlm_probability: 0.15 -> 0.3"),
    ],
)
def test_a_checkpoint_resumes_only_its_own_run(runs, tmp_path, capfd, change, named):
    """Resuming with another student, objective or masking would train a mixed run: one line, exit 2,
    before anything is loaded or written."""
    run = tmp_path / "run"
    runs.reference(0)
    shutil.copytree(runs.root / "reference_0_workers", run)
    before = sorted(p.name for p in run.rglob("*"))
    capfd.readouterr()  # the reference run's output
    assert cli.main(["train", *runs.overrides(run, 0, "train.max_steps=12", change)]) == 2
    (line,) = capfd.readouterr().err.strip().splitlines()
    assert line.startswith(
        f"pretrain-distill train: error: {run / 'checkpoints' / 'step_00000008'} belongs to"
    )
    assert named in line and "train.max_steps" not in line and "train.resume=overwrite" in line
    assert sorted(p.name for p in run.rglob("*")) == before


def test_shards_moved_to_another_disk_resume_exactly(runs, tmp_path, capsys):
    """A requeued job that copies the shards to a node-local disk resumes from the checkpoint as if
    uninterrupted: the data is matched by content, and the summary lists what changed."""
    killed = runs.child(tmp_path / "run", 0, "log", 4)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    moved = shutil.copytree(runs.shards, tmp_path / "node-local" / "shards")
    resumed = runs.resume(tmp_path / "run", 0, f"data.shards={moved}")
    assert_same(outcome(resumed), runs.reference(0), "shards moved after a SIGKILL at step 4")
    assert f"changed    data.shards: {runs.shards} -> {moved}" in capsys.readouterr().out


FAULTS = [
    ("log", "KILL"),
    ("log", "TERM"),
    ("log", "TERM_GROUP"),
    ("log", "USR1"),
    ("save", "KILL"),
    ("commit", "KILL"),
]


@pytest.mark.skipif(not ROUNDS, reason="the long randomised variant: set PD_FAULT_ROUNDS=N")
@pytest.mark.parametrize("round_", range(ROUNDS))
def test_random_faults(runs, tmp_path, round_):
    rng = random.Random(SEED * 1000 + round_)
    workers = rng.choice([0, 2, 3])
    out = tmp_path / "run"
    context = [f"workers={workers} (PD_FAULT_SEED={SEED}, round {round_})"]
    for _ in range(rng.randint(1, 3)):  # one to three faults, each in the run resumed from the last
        at, sig = rng.choice(FAULTS)
        step = rng.choice([3, 6]) if at != "log" else rng.randint(1, STEPS - 1)
        context.append(f"SIG{sig} at {at} of step {step}")
        rc = runs.child(out, workers, at, step, sig).returncode
        assert rc in (-signal.SIGKILL, EXIT_PREEMPTED, 0), context
    assert_same(outcome(runs.resume(out, workers)), runs.reference(workers), "; ".join(context))
