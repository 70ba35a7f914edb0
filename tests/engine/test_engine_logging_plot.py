"""JSON-lines + TensorBoard logger (truncation on resume) and the plot command."""

from __future__ import annotations

import json

import pytest

from pretrain_distill.core.metrics_log import MetricsLogger, read_metrics
from pretrain_distill.plot import plot_run


def _records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_logger_writes_jsonl_and_tensorboard(tmp_path):
    with MetricsLogger(tmp_path / "logs", enabled=True) as log:
        for step in (1, 2, 3):
            log.log(step, {"loss": 1.0 / step, "loss_hs": 0.5 / step, "lr": 1e-4, "tokens_per_s": 100.0})
    records = _records(tmp_path / "logs" / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3]
    assert records[1]["loss_hs"] == pytest.approx(0.25)
    events = list((tmp_path / "logs" / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0


def test_resume_cuts_logs_back_to_the_checkpoint(tmp_path):
    with MetricsLogger(tmp_path / "logs", enabled=True) as log:
        for step in range(1, 6):
            log.log(step, {"loss": float(step)})
    with open(tmp_path / "logs" / "metrics.jsonl", "a") as f:
        f.write('{"step": 6, "loss"')  # torn line from a killed write
    with MetricsLogger(tmp_path / "logs", enabled=True, resume_step=3) as log:
        log.log(4, {"loss": 40.0})
    assert [(r["step"], r["loss"]) for r in read_metrics(tmp_path / "logs" / "metrics.jsonl")] == [
        (1, 1.0),
        (2, 2.0),
        (3, 3.0),
        (4, 40.0),
    ]


def test_disabled_logger_writes_nothing(tmp_path):
    with MetricsLogger(tmp_path / "logs", enabled=False) as log:
        log.log(1, {"loss": 1.0})
    assert not (tmp_path / "logs").exists()


def test_plot_writes_pngs(tmp_path):
    with MetricsLogger(tmp_path / "logs", enabled=True) as log:
        for step in range(1, 11):
            log.log(
                step,
                {
                    "loss": 2.0 / step,
                    "loss_minilmv2": 1.0 / step,
                    "lr": step * 1e-5,
                    "grad_norm": 1.0,
                    "tokens_per_s": 1000.0,
                },
            )
    paths = plot_run(tmp_path)
    assert sorted(p.name for p in paths) == ["losses.png", "training.png"]
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_metrics_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no metrics"):
        plot_run(tmp_path)
