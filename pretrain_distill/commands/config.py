"""Print the resolved run config: YAML files composed in order (with their `defaults:`), then
overrides applied, validated. Example:

  pretrain-distill config configs/experiments/minilm_3l_minilmv2.yaml train.lr=3e-4
"""

from __future__ import annotations

import argparse

import yaml

from pretrain_distill.core.command_line import add_config_arguments, config_from_args
from pretrain_distill.core.config_loading import to_dict
from pretrain_distill.run_config import RunConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)


def run(args: argparse.Namespace) -> int:
    print(yaml.safe_dump(to_dict(config_from_args(RunConfig, args)), sort_keys=False), end="")
    return 0
