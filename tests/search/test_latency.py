"""`pretrain-distill latency`: statistics, the table's shape and ratio arithmetic on tiny models, bad
inputs."""

from __future__ import annotations

import json
import statistics

import pytest
import torch

from pretrain_distill import cli
from pretrain_distill.core.errors import ConfigError
from pretrain_distill.latency import (
    PAPER_CPU_MS,
    LatencySettings,
    LatencyStats,
    build_model,
    latency_rows,
    markdown_table,
    measure_latencies,
    parse_shape,
    shape_of,
    summarize,
    torch_threads,
)

FAST = LatencySettings(seq=16, warmup=1, repeats=3)


def bert_encoder_params(layers: int, hidden: int, ffn: int, vocab: int, positions: int) -> int:
    """Embeddings (word, position, 2 token types, LayerNorm) + per layer Q/K/V/O, FFN and two LayerNorms."""
    embeddings = vocab * hidden + positions * hidden + 2 * hidden + 2 * hidden
    layer = (
        4 * (hidden * hidden + hidden)
        + 2 * hidden
        + (hidden * ffn + ffn)
        + (ffn * hidden + hidden)
        + 2 * hidden
    )
    return embeddings + layers * layer


def test_summarize_gives_median_iqr_mean_std():
    stats = summarize([4.0, 1.0, 100.0, 3.0, 2.0])  # one outlier (another job took the core)
    assert stats.median_ms == 3.0
    assert stats.iqr_ms == pytest.approx(4.0 - 2.0)
    assert stats.mean_ms == pytest.approx(22.0)
    assert stats.std_ms == pytest.approx(statistics.stdev([1, 2, 3, 4, 100]))
    assert stats.repeats == 5
    assert summarize([7.0]) == LatencyStats(7.0, 0.0, 7.0, 0.0, 1)


def test_rows_shape_params_and_ratios(tiny_teacher_dir, tmp_path, tokenizer):
    exported = tmp_path / "exported"
    build_model("1,2,32,64", str(tiny_teacher_dir)).save_pretrained(exported)
    rows = latency_rows(["2,4,64,128", "1,2,32,64", str(exported)], str(tiny_teacher_dir), FAST)

    assert [r.name for r in rows] == ["2,4,64,128", "1,2,32,64", str(exported), "teacher"]
    assert [r.shape for r in rows] == [[2, 4, 64, 128], [1, 2, 32, 64], [1, 2, 32, 64], [2, 4, 64, 128]]
    vocab = len(tokenizer)
    assert rows[1].params == rows[2].params == bert_encoder_params(1, 32, 64, vocab, 64)
    assert rows[0].params == rows[3].params == bert_encoder_params(2, 64, 128, vocab, 64)
    teacher_ms = rows[-1].stats.median_ms
    for row in rows:
        assert row.stats.repeats == 3 and row.stats.median_ms > 0
        assert row.ratio == pytest.approx(row.stats.median_ms / teacher_ms)
    assert rows[-1].ratio == 1.0


def test_markdown_table_lines_and_paper_ratio():
    stats = {name: LatencyStats(ms, 0.1, ms, 0.2, 5) for name, ms in (("3L", 10.0), ("teacher", 40.0))}
    from pretrain_distill.latency import LatencyRow

    rows = [
        LatencyRow("3L", [3, 12, 384, 1024], 16_090_000, stats["3L"], 0.25),
        LatencyRow("teacher", [12, 12, 768, 3072], 109_480_000, stats["teacher"], 1.0),
    ]
    table = markdown_table(rows, LatencySettings(), paper=True).splitlines()
    assert len(table) == 2 + len(rows) + 2  # header, rule, rows, blank, settings
    cells = [c.strip() for c in table[2].strip("|").split("|")]
    assert cells == [
        "3L",
        "torch",
        "3, 12, 384, 1024",
        "16.1",
        "10.00",
        "0.10",
        "10.00 (0.20)",
        "0.250",
        "0.083",
    ]
    assert round(PAPER_CPU_MS["3L"] / PAPER_CPU_MS["teacher"], 3) == 0.083
    assert table[-1] == "cpu, batch 1 x 128 tokens, 1 thread(s), 5 warm-up + 30 timed forwards per model"
    assert "paper" not in markdown_table(rows, LatencySettings())


def test_measure_restores_threads_and_rejects_too_long_inputs(tiny_teacher_dir):
    model = build_model("1,2,32,64", str(tiny_teacher_dir))
    before = torch.get_num_threads()
    with torch_threads(2):
        assert torch.get_num_threads() == 2
    assert torch.get_num_threads() == before
    stats = measure_latencies([model, model], LatencySettings(seq=64, warmup=0, repeats=2))
    assert [s.repeats for s in stats] == [2, 2]
    with pytest.raises(ConfigError, match="sequence length 65 exceeds .* max_position_embeddings 64"):
        measure_latencies([model], LatencySettings(seq=65, warmup=0, repeats=1))


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("2,3,64,128", r"heads \(3\) must divide hidden \(64\)"),
        ("0,2,32,64", "layers must be a positive integer"),
        ("2,x,64,128", "four integers"),
        ("2,4,64", "not a preset .* shape L,A,H,F .* or a model directory"),
        ("7L", "not a preset"),
        ("modernbrt:3L", "model_type 'modernbrt' .did you mean 'modernbert'"),
        ("modernbert:2,4,64", "after modernbert: give a preset or L,A,H,F"),
    ],
)
def test_bad_model_names_are_clear_errors(target, message, tiny_teacher_dir):
    with pytest.raises(ConfigError, match=message):
        build_model(target, str(tiny_teacher_dir))


def test_a_family_prefix_builds_that_family_with_the_teachers_vocabulary(tiny_teacher_dir):
    assert parse_shape("modernbert:3L").text == "modernbert:3,12,384,1024"
    assert parse_shape("2,4,64,128").text == "2,4,64,128" and parse_shape("runs/x") is None
    model = build_model("modernbert:1,2,32,48", str(tiny_teacher_dir))
    assert type(model).__name__ == "ModernBertModel" and model.config.vocab_size == 30522
    assert shape_of(model) == [1, 2, 32, 48]
    assert type(build_model("deberta-v2:1,2,32,48", str(tiny_teacher_dir))).__name__ == "DebertaV2Model"


@pytest.mark.parametrize(
    ("kwargs", "message"), [({"batch": 0}, "batch must be >= 1"), ({"warmup": -1}, "warmup must be >= 0")]
)
def test_bad_settings_are_clear_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        LatencySettings(**kwargs)


def test_cli_writes_the_table_and_json(tiny_teacher_dir, tmp_path, capsys):
    out = tmp_path / "latency.md"
    args = ["latency", "1,2,32,64", "--teacher", str(tiny_teacher_dir), "--seq", "8", "--warmup", "0"]
    assert cli.main([*args, "--repeats", "2", "--out", str(out)]) == 0
    printed, progress = capsys.readouterr()
    assert out.read_text() == printed  # stdout: the table, nothing else
    assert "latency:" in progress and "0/2 [" in progress  # a bar over the rounds, on stderr
    record = json.loads(out.with_suffix(".json").read_text())
    assert [r["name"] for r in record["rows"]] == ["1,2,32,64", "teacher"]
    assert record["settings"]["seq"] == 8 and record["rows"][1]["ratio"] == 1.0


def test_onnx_runtimes_time_every_model_with_ratios_per_runtime(tiny_teacher_dir, tmp_path, capsys):
    out = tmp_path / "latency.md"
    args = ["latency", "1,2,32,64", "--teacher", str(tiny_teacher_dir), "--seq", "8", "--warmup", "1"]
    assert cli.main([*args, "--repeats", "2", "--runtime", "torch", "onnx-int8", "--out", str(out)]) == 0
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert [(r["name"], r["runtime"]) for r in rows] == [
        ("1,2,32,64", "torch"),
        ("teacher", "torch"),
        ("1,2,32,64", "onnx-int8"),
        ("teacher", "onnx-int8"),
    ]
    for row, teacher in ((rows[0], rows[1]), (rows[2], rows[3])):
        assert row["ratio"] == pytest.approx(row["stats"]["median_ms"] / teacher["stats"]["median_ms"])
        assert teacher["ratio"] == 1.0 and row["stats"]["repeats"] == 2
    assert "| onnx-int8 |" in capsys.readouterr().out


def test_onnx_runtimes_refuse_cuda(tiny_teacher_dir, tmp_path):
    from pretrain_distill.latency import forward_runner

    model = build_model("1,2,32,64", str(tiny_teacher_dir))
    settings = LatencySettings(seq=8)
    object.__setattr__(settings, "device", "cuda")  # as if a GPU were present
    with pytest.raises(ConfigError, match="runs on the CPU"):
        forward_runner(model, settings, "onnx", tmp_path)
