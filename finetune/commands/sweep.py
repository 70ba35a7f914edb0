"""Run tasks x seeds: locally one after another, or one job per SLURM array index.

`{task}` in model / distill.teacher / run_name is replaced by each job's task (per-task teachers).
On SLURM, size the array with --count and let each array task run its own index:

  sbatch --array=0-$(( $(finetune sweep --tasks sst2 mrpc rte --seeds 1 2 3 --count) - 1 )) \\
      slurm/finetune_array.sbatch --model runs/distill/export --tasks sst2 mrpc rte --seeds 1 2 3

Examples:
  finetune sweep --model minilm --tasks cola sst2 mrpc stsb qqp mnli qnli rte --data-dir glue_data
  finetune sweep --model minilm --tasks sst2 mrpc --seeds 1 2 3 --list
  finetune sweep --model minilm --tasks sst2 mrpc --seeds 1 2 3 --index 4     # = mrpc, seed 2
  finetune sweep --student S --teacher 'runs/finetune/{task}/minilm/seed1/model' --method pkd --tasks rte mrpc
"""

from __future__ import annotations

import argparse
import dataclasses

from finetune.commands.job_options import add_distill_options, add_job_arguments, job_config
from finetune.jobs import print_run_dirs, sweep_jobs
from finetune.jobs import run as run_job
from pretrain_distill.core.console import quiet_libraries


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_job_arguments(parser)
    parser.add_argument("--tasks", nargs="+", help="tasks to run (default: the config's task)")
    add_distill_options(parser)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--index", type=int, help="run only job INDEX (a SLURM array task id)")
    mode.add_argument("--list", action="store_true", help="print the jobs and exit")
    mode.add_argument("--count", action="store_true", help="print the number of jobs and exit")


def run(args: argparse.Namespace) -> int:
    quiet_libraries()
    cfg = job_config(args)
    todo = sweep_jobs(cfg, args.tasks or [cfg.task])
    if args.count:
        print(len(todo))
        return 0
    if args.list:
        for i, job in enumerate(todo):
            print(f"{i}\t{job.task}\tseed={job.seeds[0]}\t{job.model}")
        return 0
    if args.index is not None:
        if not 0 <= args.index < len(todo):
            raise SystemExit(f"finetune sweep: --index {args.index} out of range 0..{len(todo) - 1}")
        todo = [todo[args.index]]
    else:  # locally: one job per task with all its seeds (the data is loaded once per task)
        todo = [dataclasses.replace(job, seeds=cfg.seeds) for job in todo[:: len(cfg.seeds)]]
    for job in todo:
        print_run_dirs(run_job(job))
    return 0
