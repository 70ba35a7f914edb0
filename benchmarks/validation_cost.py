"""What validation during distillation costs, as a fraction of training time, at the defaults.

Prepares the real Wikipedia dump (max_length 256, 5% of the documents held out), builds the default
run (MiniLM teacher, 3L student, micro batch 32, MiniLMv2) on this machine, times ``--steps`` optimizer
steps and ``--batches`` validation batches (``Trainer.validate``), and extrapolates to the defaults
``train.eval_every`` / ``train.eval_batches``. Two clocks: wall time (the step time from the run's own
``tokens_per_s`` log, which excludes checkpoint time) and this process's CPU time (meaningful on a
shared machine; the step's includes the run's start-up step and one final checkpoint, so it is a
slight over-estimate of the step and under-estimate of the cost):

    cost = eval_batches x seconds per validation batch / (eval_every x seconds per step)

  .venv/bin/python benchmarks/validation_cost.py               # CPU, fp32: a few minutes on 2 cores
  .venv/bin/python benchmarks/validation_cost.py --device cuda --precision bf16
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from pretrain_distill.core.assets import wikipedia_dump_path
from pretrain_distill.core.command_line import run_script
from pretrain_distill.core.distributed import launcher_env_scope, require_device
from pretrain_distill.core.metrics_log import read_metrics
from pretrain_distill.data.prepare import prepare_shards
from pretrain_distill.engine.signals import PreemptionFlag
from pretrain_distill.engine.trainer import Trainer
from pretrain_distill.run_config import TrainConfig, load_run_config


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps timed (after one warm-up)")
    parser.add_argument("--batches", type=int, default=4, help="validation batches timed")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32")
    args = parser.parse_args(argv)
    require_device(args.device, "--device")  # before preparing anything
    defaults = TrainConfig()
    work = Path(tempfile.mkdtemp(prefix="val-cost-"))
    shards = work / "shards"
    prepare_shards(
        [f"wikipedia:{wikipedia_dump_path()}"], shards, "minilm", 256, workers=1, progress=False,
        validation_fraction=0.05,
    )  # fmt: skip
    overrides = [
        f"data.shards={shards}",
        f"train.output_dir={work / 'run'}",
        f"train.device={args.device}",
        f"train.precision={args.precision}",
        f"train.max_steps={args.steps + 1}",
        "train.log_every=1",
        "train.save_every=100000",
        "train.export=false",
        "train.eval_every=0",
        "data.num_workers=0",
    ]
    cfg = load_run_config(overrides=overrides)
    with launcher_env_scope(), PreemptionFlag() as flag:
        trainer = Trainer(cfg)
        cpu = time.process_time()
        trainer.fit(flag)
        step_cpu = (time.process_time() - cpu) / (args.steps + 1)
        from pretrain_distill.engine.evaluate import load_validation_batches, validation_dir

        trainer.validation = load_validation_batches(
            validation_dir(cfg.data), cfg.train.micro_batch_size, args.batches, seed=cfg.train.seed
        )
        trainer.validate()  # warm-up
        start, cpu = time.perf_counter(), time.process_time()
        trainer.validate()
        per_batch = (time.perf_counter() - start) / len(trainer.validation)
        batch_cpu = (time.process_time() - cpu) / len(trainer.validation)
    records = [r for r in read_metrics(work / "run" / "logs" / "metrics.jsonl") if "tokens_per_s" in r]
    step_seconds = statistics.median(
        (b["tokens"] - a["tokens"]) / b["tokens_per_s"] for a, b in zip(records, records[1:])
    )
    rows = {"wall": (step_seconds, per_batch), "CPU time": (step_cpu, batch_cpu)}
    print(
        f"\nDevice: {args.device} ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"load average {os.getloadavg()[0]:.1f}), torch {torch.__version__}, precision {args.precision}; "
        f"MiniLM teacher, 3L student, MiniLMv2, micro batch {cfg.train.micro_batch_size} x 256.\n"
    )
    print("| clock | s per training step | s per validation batch | eval_every | eval_batches | cost |")
    print("|---|---:|---:|---:|---:|---:|")
    for clock, (step, batch) in rows.items():
        cost = defaults.eval_batches * batch / (defaults.eval_every * step)
        print(
            f"| {clock} | {step:.3f} | {batch:.3f} | {defaults.eval_every} | {defaults.eval_batches} "
            f"| {100 * cost:.2f}% |"
        )


if __name__ == "__main__":
    raise SystemExit(run_script(main, "validation_cost.py"))  # a mistake: one line, exit 2
