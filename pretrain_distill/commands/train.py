"""Distill a student from a teacher: DeepSpeed (ZeRO 0-3, bf16/fp32), resumable, preemption-safe.

  pretrain-distill train <config.yaml ...> [section.key=value ...]

The run directory (train.output_dir) receives config.yaml, checkpoints/step_XXXXXXXX/ (every
train.save_every steps and at the end, last train.keep_last kept), logs/metrics.jsonl,
logs/tensorboard/, and export/ (the student as a Hugging Face model). Rerunning the same command
continues from the newest complete checkpoint (train.resume=auto).

Launch (the same config everywhere; rank, world size and master address come from the launcher):

  # laptop CPU, one process (the minilm_* configs are small and fp32; device auto -> cpu)
  pretrain-distill train configs/experiments/minilm_3l_minilmv2.yaml train.max_steps=200

  # one GPU (bf16, ZeRO-2)
  pretrain-distill train configs/experiments/bert_base_6l_minilmv2.yaml

  # one node, N GPUs (either launcher)
  torchrun --standalone --nproc_per_node=8 -m pretrain_distill.cli train configs/experiments/bert_base_6l_minilmv2.yaml
  deepspeed --num_gpus 8 --module pretrain_distill.cli train configs/experiments/bert_base_6l_minilmv2.yaml

  # N nodes with torchrun: on every node, NODE_RANK = 0..N-1, HEAD = the first node's address
  torchrun --nnodes=4 --nproc_per_node=8 --node_rank=$NODE_RANK --rdzv_backend=c10d --rdzv_endpoint=$HEAD:29500 -m pretrain_distill.cli train configs/experiments/bert_base_6l_minilmv2.yaml

  # SLURM, N nodes, one task per GPU, requeued on preemption (see slurm/README.md)
  sbatch --nodes=4 slurm/distill.sbatch configs/experiments/bert_base_6l_minilmv2.yaml

  # multi-stage: the OD stage starts from the HS stage's run (student.init_from in the config)
  pretrain-distill train configs/experiments/bert_base_6l_hs_uniform_last.yaml
  pretrain-distill train configs/experiments/bert_base_6l_od_stage.yaml

It prints a start-up summary (teacher, student and its parameter count, objective, mapping, global
batch, steps and tokens, output directory), and at the end exports the student (train.export).

Exit codes: 0 done; 2 a mistake in the config or its inputs (one line naming it); 1 a run-time error
(non-finite loss, ...); 75 preempted by SIGTERM / SIGUSR1 after saving a checkpoint (rerun to continue).
"""

from __future__ import annotations

import argparse

from pretrain_distill.core.command_line import add_config_arguments, config_from_args
from pretrain_distill.core.console import quiet_libraries
from pretrain_distill.engine import train
from pretrain_distill.export import end_of_run
from pretrain_distill.run_config import RunConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Errors propagate to the CLI (one line; exit 2 for config / input mistakes, 1 otherwise)."""
    quiet_libraries()
    run_dir = train(config_from_args(RunConfig, args), on_end=end_of_run)  # preempted: exit 75 (the CLI)
    print(f"pretrain-distill train: done: {run_dir}")
    return 0
