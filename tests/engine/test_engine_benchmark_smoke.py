"""benchmarks/distill_throughput.py still runs (tiny CPU shapes): naive and ours rows, ratios, MFU."""

from __future__ import annotations

import importlib.util

import torch
from engine_helpers import REPO


def test_distill_throughput_runs_on_cpu(capsys):
    spec = importlib.util.spec_from_file_location(
        "distill_throughput", REPO / "benchmarks" / "distill_throughput.py"
    )
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    threads = torch.get_num_threads()  # the benchmark pins CPU runs to one thread
    args = "--device cpu --batch 2 --seq 16 --teacher-layers 3 --teacher-hidden 96 --teacher-heads 4 --teacher-ffn 128"
    args += " --students 3L --objectives hs,minilmv2,od --relation-heads 12 --warmup 0 --iters 1"
    try:
        bench.main(args.split())
    finally:
        torch.set_num_threads(threads)
    rows = [
        line
        for line in capsys.readouterr().out.splitlines()
        if line.startswith(("| hs", "| minilmv2", "| od"))
    ]
    assert [row.split(" | ")[2] for row in rows] == ["naive", "ours"] * 3
    assert all(row.rstrip(" |").endswith("x") and "%" in row for row in rows)
