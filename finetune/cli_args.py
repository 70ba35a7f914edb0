"""Arguments shared by ``finetune train | distill | sweep``: config files + overrides + common flags.

A flag is a shorthand for an override (``--data-dir D`` = ``data_dir=D``); both forms compose with YAML
files, later wins, flags last. Any config field works as an override (``lr=3e-5``, ``--distill.alpha``).
"""

from __future__ import annotations

import argparse
import json

from finetune.config import FinetuneConfig
from pretrain_distill.configuration import add_config_arguments, load_config, split_files_and_overrides

FLAGS: dict[str, str] = {  # flag dest -> config key
    "model": "model",
    "task": "task",
    "seeds": "seeds",
    "data_dir": "data_dir",
    "output_dir": "output_dir",
    "run_name": "run_name",
    "max_train_samples": "max_train_samples",
    "max_eval_samples": "max_eval_samples",
    "max_steps": "max_steps",
    "epochs": "epochs",
    "max_length": "max_length",
    "device": "device",
    "select": "select",
    "deepspeed": "deepspeed",
    "teacher": "distill.teacher",
    "student": "model",
    "method": "distill.method",
}


def add_common_arguments(parser: argparse.ArgumentParser, distill: bool = False) -> None:
    add_config_arguments(parser)
    if distill:
        parser.add_argument("--teacher", help="fine-tuned teacher directory (distill.teacher)")
        parser.add_argument("--student", help="student model directory (model)")
        parser.add_argument("--method", choices=["vanilla", "pkd", "rail_l", "rail_c", "ild_rtc"])
    else:
        parser.add_argument("--model", help="Hugging Face model directory, or 'minilm' (model)")
    parser.add_argument("--task", help="cola sst2 mrpc stsb qqp mnli qnli rte wnli xnli movies custom")
    parser.add_argument("--seeds", type=int, nargs="+", help="one run per seed (default 1 2 3)")
    parser.add_argument("--data-dir", dest="data_dir", help="local GLUE/XNLI directory (official layout)")
    parser.add_argument("--output-dir", dest="output_dir", help="root of the run directories")
    parser.add_argument("--run-name", dest="run_name", help="row name in reports (default: model dir name)")
    parser.add_argument("--max-train-samples", dest="max_train_samples", type=int)
    parser.add_argument("--max-eval-samples", dest="max_eval_samples", type=int)
    parser.add_argument("--max-steps", dest="max_steps", type=int, help="step budget (stops early)")
    parser.add_argument("--epochs", type=float, help="default: the paper's per-task number")
    parser.add_argument("--max-length", dest="max_length", type=int, help="default 128")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--select", choices=["best", "last"], help="keep the best dev epoch or the last")
    parser.add_argument("--deepspeed", help="DeepSpeed JSON: wrap the model with deepspeed.initialize")
    parser.add_argument("--no-progress", dest="no_progress", action="store_true", help="no tqdm bars")


def flag_overrides(args: argparse.Namespace) -> list[str]:
    """The given flags as ``key=value`` overrides (JSON-encoded, so a string stays a string in YAML)."""
    out = [
        f"{key}={json.dumps(getattr(args, dest))}"
        for dest, key in FLAGS.items()
        if getattr(args, dest, None) is not None
    ]
    if getattr(args, "no_progress", False):
        out.append("progress=false")
    return out


def config_from_args(args: argparse.Namespace) -> FinetuneConfig:
    """YAML files, then ``key=value`` overrides, then flags -> a validated :class:`FinetuneConfig`."""
    files, overrides = split_files_and_overrides(list(args.config))
    return load_config(FinetuneConfig, files, overrides + list(args.overrides) + flag_overrides(args))
