"""Fine-tune a model on a task, one run per seed (the paper's protocol by default: AdamW at 2e-5,
batch 32, 3 epochs (CoLA 6, XNLI 5), max length 128, linear warmup + decay, best dev epoch kept).

Each run writes <output_dir>/<task>/<run_name>/seed<k>/{metrics.json, config.yaml, model/}.

Examples:
  finetune train --model minilm --task sst2 --data-dir glue_data --seeds 1 2 3
  finetune train --model runs/distill/export --task mnli --max-train-samples 2000 --max-steps 100
  finetune train configs/finetune/movies.yaml --model minilm --seeds 1 --epochs 1
  finetune train configs/finetune/ood_sst2_imdb.yaml --model minilm --data-dir data lr=3e-5
"""

from __future__ import annotations

import argparse

from finetune.cli_args import add_common_arguments, config_from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from finetune.run import run as run_job

    cfg = config_from_args(args)
    if cfg.distill.teacher:
        raise SystemExit("finetune train: distill.teacher is set; use `finetune distill`")
    for run_dir in run_job(cfg):
        print(run_dir)
    return 0
