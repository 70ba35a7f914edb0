"""Fit an MLM head on a frozen teacher that has none (all-MiniLM-L6-v2, an ELECTRA discriminator, a
DeBERTa-v3 checkpoint), so that OD transfer can read its output distribution:

  pretrain-distill fit-mlm-head --shards runs/shards/wiki --out runs/teacher_mlm --steps 1000
  pretrain-distill train students/3L objectives/od teacher.path=runs/teacher_mlm \\
      student.init_from=runs/hs/export                      # OD as the second stage after HS

The teacher's encoder stays frozen (eval mode, inference mode, its outputs unchanged). Only the head
trains: the family's MLM head chain (docs/models.md), e.g. for BERT, RoBERTa and XLM-R the transform
(dense + activation + LayerNorm) and the output bias, for ModernBERT `head` and the decoder bias, for
ELECTRA `generator_predictions` and `generator_lm_head`'s bias, with a decoder tied to the frozen input
embeddings left as it is. Data: the prepared shards with dynamic
MLM masking (15%, 80/10/10); loss: cross-entropy over the masked positions, the head run on those
positions only; AdamW with linear warmup (5%) and decay. The output is a ``*ForMaskedLM`` directory (the
teacher's encoder weights as they were, the fitted head, the tokenizer) plus ``mlm_head.json`` with the
settings and the masked-token loss, accuracy and perplexity over the first and the last 100 steps (on
the training stream: the corpus is small, and a held-out split would be smaller still).

This is a head fitted on a frozen sentence encoder's last layer, not the head MLM pretraining trains
together with the encoder: the teacher's token states were never shaped to predict masked words, which
bounds what any head can reach (``mlm_head.json`` says how far it got).
"""

from __future__ import annotations

import argparse
import json

from pretrain_distill.core.console import quiet_libraries
from pretrain_distill.mlm_head import fit_mlm_head


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--teacher", default="minilm", help="teacher path or embedded name (default: minilm)")
    parser.add_argument("--shards", required=True, help="shards directory from `pretrain-distill prepare`")
    parser.add_argument(
        "--out",
        required=True,
        help="output directory: new, or an earlier fit-mlm-head output (replaced whole)",
    )
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=5e-3, help="peak learning rate (default: 5e-3)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    quiet_libraries()
    record = fit_mlm_head(
        args.teacher, args.shards, args.out, args.steps, args.batch_size, args.lr, args.device, args.seed
    )
    print(json.dumps(record, indent=1))
    return 0
