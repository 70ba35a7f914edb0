"""What a pruned student vocabulary (student.vocab=corpus) saves on your corpus, before training:

  pretrain-distill vocab configs/experiments/minilm_3l_minilmv2.yaml data.shards=runs/shards/wiki
  pretrain-distill vocab teacher.path=xlm-roberta-base data.shards=runs/shards/cc100-de \\
      student.preset=3L student.vocab_coverage=0.9999

Reads the run config (YAML files and overrides, as `train` does; student.vocab is taken as corpus),
the teacher's config and tokenizer (no weights) and the shards' token counts (`prepare` records them),
and prints the kept tokens, the share of the corpus tokens that would become the unknown token, and the
student's encoder parameters and fp32 size with the full and with the pruned vocabulary. `--json`
prints the record instead.
"""

from __future__ import annotations

import argparse
import json

from pretrain_distill.core.command_line import add_config_arguments, config_from_args
from pretrain_distill.core.console import quiet_libraries
from pretrain_distill.run_config import RunConfig
from pretrain_distill.vocab.savings import savings_table, vocab_savings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print the record as JSON")


def run(args: argparse.Namespace) -> int:
    quiet_libraries()
    record = vocab_savings(config_from_args(RunConfig, args))
    print(json.dumps(record, indent=2) if args.json else savings_table(record), end="\n" if args.json else "")
    return 0
