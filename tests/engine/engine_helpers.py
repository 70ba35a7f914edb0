"""Helpers shared by the engine tests: tiny run configs and child processes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from pretrain_distill.run_config import RunConfig, load_run_config
from tests.launch import REPO, subprocess_env

PYTHON = sys.executable

# A child script (one rank): train with the JSON overrides in argv[1], then save the student's weights
# as <output_dir>/weights_rank<r>.pt.
TRAIN_AND_DUMP_WEIGHTS = """
import json, sys, torch
from pretrain_distill.run_config import load_run_config
from pretrain_distill.engine.signals import PreemptionFlag
from pretrain_distill.engine.trainer import Trainer
cfg = load_run_config(overrides=json.loads(sys.argv[1]))
with PreemptionFlag() as flag:
    trainer = Trainer(cfg)
    trainer.fit(flag)
state = {k: v.detach().clone() for k, v in trainer.distiller.student.state_dict().items()}
torch.save(state, f"{cfg.train.output_dir}/weights_rank{trainer.dist.rank}.pt")
"""


def tiny_overrides(teacher: Path, shards: Path, out: Path, *extra: str) -> list[str]:
    """Overrides for a fast CPU run: tiny student, fp32, ZeRO-2, no loader workers."""
    return [
        f"teacher.path={teacher}",
        "student.preset=null",
        "student.layers=2",
        "student.heads=2",
        "student.hidden=32",
        "student.ffn=64",
        f"data.shards={shards}",
        "data.num_workers=0",
        "data.shuffle_buffer=64",
        f"train.output_dir={out}",
        "train.device=cpu",
        "train.precision=fp32",
        "train.micro_batch_size=4",
        "train.max_steps=6",
        "train.save_every=3",
        "train.log_every=1",
        "train.lr=1e-3",
        "train.warmup_ratio=0.1",
        "objective.weights={hs: 1.0}",
        "objective.mapping=uniform",
        *extra,
    ]


def tiny_config(teacher: Path, shards: Path, out: Path, *extra: str) -> RunConfig:
    return load_run_config(overrides=tiny_overrides(teacher, shards, out, *extra))


def run_python(code: str, *args: str, env: dict[str, str] | None = None, timeout: int = 180):
    """Run ``code`` in a fresh interpreter (cwd = repo); returns the CompletedProcess."""
    return subprocess.run(
        [PYTHON, "-c", code, *args],
        cwd=REPO,
        env=env or subprocess_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
