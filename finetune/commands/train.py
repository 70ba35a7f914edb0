"""Fine-tune a model on a task, one run per seed (the paper's protocol by default: AdamW at 2e-5,
batch 32, 3 epochs (CoLA 6, XNLI 5), max length 128, linear warmup + decay, best dev epoch kept).

Each run writes <output_dir>/<task>/<run_name>/seed<k>/{metrics.json, config.yaml, model/, log.jsonl,
tensorboard/, checkpoints/}; one line per evaluation ("epoch 2: accuracy 0.8730"); rerun to resume.
Several GPUs: torchrun --nproc_per_node N -m finetune.cli train ... (batch_size is the global batch).

Examples:
  finetune train --model minilm --task sst2 --data-dir glue_data --seeds 1 2 3
  finetune train --model runs/distill/export --task mnli --max-train-samples 2000 --max-steps 100
  finetune train configs/finetune/movies.yaml --model minilm --seeds 1 --epochs 1
  finetune train configs/finetune/ood_sst2_imdb.yaml --model minilm --data-dir data lr=3e-5
  finetune train --model minilm --task qqp --data-dir glue_data precision=bf16 grad_accum=2 eval_every=1000
"""

from __future__ import annotations

import argparse

from finetune.commands.job_options import add_job_arguments, run_jobs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_job_arguments(parser, distill=False)


def run(args: argparse.Namespace) -> int:
    return run_jobs(args, distill=False)
