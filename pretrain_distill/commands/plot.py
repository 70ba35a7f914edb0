"""Write a run's curves as PNGs under ``<run_dir>/plots/``, from ``logs/metrics.jsonl``:

  losses.png     the total loss and every loss term against the optimizer step (log scale), with
                 the validation curve (val_*, train.eval_every) beside the training one when logged
  training.png   learning rate, gradient norm and tokens/s against the step

Example:

  pretrain-distill plot runs/distill
"""

from __future__ import annotations

import argparse

from pretrain_distill.plot import plot_run


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="run directory (holds logs/metrics.jsonl)")


def run(args: argparse.Namespace) -> int:
    for path in plot_run(args.run_dir):
        print(path)
    return 0
