"""Task-specific distillation from a fine-tuned teacher into a student, one run per seed.

Methods: vanilla (CE + T^2 KL), pkd (+ normalised [CLS] MSE, skip/last layers), rail_l / rail_c
(RAIL-KD layer-wise / concatenated, random sorted teacher layers redrawn each epoch), ild_rtc (reused
frozen teacher classifier, uniform mapping, KL at T = 10). Loss weights: distill.ce_weight,
distill.kd_weight, distill.layer_weight, distill.temperature (defaults per method, docs/finetune.md).

Examples:
  finetune distill --teacher runs/finetune/sst2/minilm/seed1/model --student runs/distill/export \\
      --task sst2 --method rail_c --data-dir glue_data
  finetune distill configs/finetune/distill_ild_rtc.yaml --teacher T --student S --task mrpc \\
      distill.layer_weight=500 distill.ce_weight=0.2
"""

from __future__ import annotations

import argparse

from finetune.commands.job_options import add_job_arguments, run_jobs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_job_arguments(parser, distill=True)


def run(args: argparse.Namespace) -> int:
    return run_jobs(args, distill=True)
