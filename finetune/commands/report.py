"""Tables shaped like the papers' from stored runs: one row per model/method, one column per task,
mean (std) over seeds (scores x 100; std over seeds, ddof 1), GLUE average with and without CoLA, an
XNLI per-language table (test accuracy), an out-of-domain table, CSV copies and a bar chart.

A task's score is the mean of its official metrics (GLUE benchmark convention: STS-B mean of Pearson
and Spearman, MRPC / QQP mean of F1 and accuracy). MNLI shows matched and mismatched columns and counts
once (their mean) in the GLUE averages; averages run over the GLUE tasks present in a row.

Writes <out>/report.md, glue.csv, xnli.csv, ood.csv (when there are such runs), report.png.

Examples:
  finetune report runs/finetune --out reports
  finetune report runs/finetune/sst2 runs/kd/sst2/*/seed*/metrics.json --out reports/sst2
"""

from __future__ import annotations

import argparse

from finetune.report import write_report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", help="run directories (searched for metrics.json) or files")
    parser.add_argument("--out", default="reports", help="output directory (default: reports)")


def run(args: argparse.Namespace) -> int:
    written = write_report(args.runs, args.out)
    print(written["markdown"].read_text())
    for path in written.values():
        print(path)
    return 0
