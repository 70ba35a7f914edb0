"""benchmarks/distill_throughput.py still runs (tiny CPU shapes): naive and ours rows, ratios, MFU."""

from __future__ import annotations

import importlib.util

import pytest
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


def test_engine_throughput_runs_on_cpu(capsys, tiny_shards, tmp_path):
    """benchmarks/engine_throughput.py: bare rows, the real Trainer row and a lever row, in one run."""
    spec = importlib.util.spec_from_file_location(
        "engine_throughput", REPO / "benchmarks" / "engine_throughput.py"
    )
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    threads = torch.get_num_threads()
    args = "--device cpu --batch 2 --seq 32 --teacher-layers 2 --teacher-hidden 64 --teacher-heads 4 --teacher-ffn 128"
    args += (
        f" --student 3L --relation-heads 4 --steps 10 --levers sync --shards {tiny_shards} --out {tmp_path}"
    )
    try:
        bench.main(args.split())
    finally:
        torch.set_num_threads(threads)
    rows = [
        line.split(" | ")
        for line in capsys.readouterr().out.splitlines()
        if line.startswith("| bare") or line.startswith("| engine")
    ]
    assert [r[0] for r in rows] == [
        "| bare Distiller step (AdamW default)",
        "| bare Distiller step, fused AdamW",
        "| engine (Trainer, ZeRO-2)",
        "| engine + sync",
    ]
    assert rows[0][2] == "1.00" and all(float(r[1].replace(",", "")) > 0 for r in rows)
    assert rows[1][3] == "1.00" and all(float(r[5]) > 0 for r in rows[2:])  # engine rows: a checkpoint
    assert (tmp_path / "run-engine" / "logs" / "metrics.jsonl").is_file()


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without a GPU")
@pytest.mark.parametrize("script", ["distill_throughput", "engine_throughput"])
def test_gpu_defaults_on_a_cpu_machine_are_refused_in_one_line_before_any_work(script, tmp_path, capsys):
    from pretrain_distill.core.command_line import run_script

    spec = importlib.util.spec_from_file_location(script, REPO / "benchmarks" / f"{script}.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    argv = ["--out", str(tmp_path / "work")] if script == "engine_throughput" else []
    assert run_script(lambda: bench.main(argv), f"{script}.py") == 2
    captured = capsys.readouterr()
    assert (
        captured.err
        == f"{script}.py: error: --device cuda: this machine has no visible CUDA device; choose cpu\n"
    )
    assert not captured.out and not (tmp_path / "work").exists()
