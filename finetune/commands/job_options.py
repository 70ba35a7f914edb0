"""What ``finetune train | distill | sweep`` share: their config arguments and options, and running the
jobs they describe.

Each option is a shorthand for one config key (``--data-dir D`` = ``data_dir=D``): YAML files compose
first, then ``key=value`` overrides, then the options (later wins). Any config field works as an
override (``lr=3e-5``, ``--distill.alpha 0.2``).
"""

from __future__ import annotations

import argparse

from finetune.finetune_config import FinetuneConfig
from finetune.jobs import print_run_dirs, run
from pretrain_distill.core.command_line import add_config_arguments, add_config_option, config_from_args
from pretrain_distill.core.console import quiet_libraries

METHODS = ["vanilla", "pkd", "rail_l", "rail_c", "ild_rtc"]


def add_distill_options(parser: argparse.ArgumentParser) -> None:
    """``--teacher``, ``--student``, ``--method``: the task-distillation shorthands."""
    add_config_option(
        parser, "--teacher", key="distill.teacher", help="fine-tuned teacher directory (distill.teacher)"
    )
    add_config_option(parser, "--student", key="model", help="student model directory (model)")
    add_config_option(parser, "--method", key="distill.method", choices=METHODS)


def add_job_arguments(parser: argparse.ArgumentParser, distill: bool = False) -> None:
    """Config files, overrides and the shorthand options of a fine-tuning job."""
    add_config_arguments(parser)
    if distill:
        add_distill_options(parser)
    else:
        add_config_option(
            parser, "--model", key="model", help="Hugging Face model directory, or 'minilm' (model)"
        )
    add_config_option(
        parser, "--task", key="task", help="cola sst2 mrpc stsb qqp mnli qnli rte wnli xnli movies custom"
    )
    add_config_option(
        parser, "--seeds", key="seeds", type=int, nargs="+", help="one run per seed (default 1 2 3)"
    )
    add_config_option(
        parser, "--data-dir", key="data_dir", help="local GLUE/XNLI directory (official layout)"
    )
    add_config_option(parser, "--output-dir", key="output_dir", help="root of the run directories")
    add_config_option(
        parser,
        "--run-name",
        key="run_name",
        help="row name in reports (default: the model directory's name; for <run>/export, the run's)",
    )
    add_config_option(parser, "--max-train-samples", key="max_train_samples", type=int)
    add_config_option(parser, "--max-eval-samples", key="max_eval_samples", type=int)
    add_config_option(parser, "--max-steps", key="max_steps", type=int, help="step budget (stops early)")
    add_config_option(
        parser, "--epochs", key="epochs", type=float, help="default: the paper's per-task number"
    )
    add_config_option(parser, "--max-length", key="max_length", type=int, help="default 128")
    add_config_option(parser, "--device", key="device", choices=["auto", "cpu", "cuda"])
    add_config_option(
        parser, "--select", key="select", choices=["best", "last"], help="keep the best dev epoch or the last"
    )
    add_config_option(
        parser,
        "--deepspeed",
        key="deepspeed",
        help="DeepSpeed JSON: wrap the model with deepspeed.initialize",
    )
    add_config_option(
        parser, "--no-progress", key="progress", action="store_const", const=False, help="no tqdm bars"
    )


def job_config(args: argparse.Namespace) -> FinetuneConfig:
    """The validated :class:`FinetuneConfig` of a parsed command line."""
    return config_from_args(FinetuneConfig, args)


def run_jobs(args: argparse.Namespace, distill: bool) -> int:
    """``finetune train`` (``distill=False``) or ``finetune distill``: every seed; prints the run directories."""
    quiet_libraries()
    cfg = job_config(args)
    if distill and not cfg.distill.teacher:
        raise SystemExit("finetune distill: give the fine-tuned teacher (--teacher DIR)")
    if not distill and cfg.distill.teacher:
        raise SystemExit("finetune train: distill.teacher is set; use `finetune distill`")
    print_run_dirs(run(cfg))
    return 0
