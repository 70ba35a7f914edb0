"""A miniature of `make demo` on the real embedded assets: every stage runs and hands over its output."""

from __future__ import annotations

import json

import pytest
from transformers import AutoModel

from pretrain_distill.cli import main

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_tiny_demo_runs_every_stage(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--profile", "tiny", "--device", "cpu", "--out", str(out)]) == 0
    printed = capsys.readouterr().out

    manifest = json.loads((out / "shards" / "manifest.json").read_text())
    assert manifest["totals"]["sequences"] > 100  # the whole Wikipedia dump was prepared

    run_dir = out / "distill"
    records = [json.loads(line) for line in (run_dir / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss_minilmv2" in r][-1] == 3
    student = AutoModel.from_pretrained(run_dir / "export")
    assert (student.config.num_hidden_layers, student.config.hidden_size) == (3, 192)
    assert list((run_dir / "plots").glob("*.png"))

    metrics = sorted((out / "finetune" / "movies").glob("*/seed1/metrics.json"))
    assert [m.parent.parent.name for m in metrics] == ["minilmv2_lt1", "random-init", "teacher"]
    for path in metrics:
        assert 0.0 <= json.loads(path.read_text())["scores"]["dev"] <= 1.0
    assert "held-out accuracy" in printed and (out / "report" / "report.md").is_file()


def test_demo_distill_config_composes_student_objective_and_overrides(tmp_path):
    from pretrain_distill.demo import PROFILES, distill_config

    cfg = distill_config(
        tmp_path / "run",
        "minilm_2x192",
        "hs_uniform",
        PROFILES["tiny"],
        "cpu",
        tmp_path / "shards",
        ["objective.projection_bias=true"],
    )
    assert (cfg.student.layers, cfg.student.hidden) == (2, 192)
    assert cfg.objective.weights == {"hs": 1.0} and cfg.objective.mapping == "uniform"
    assert cfg.objective.projection_bias is True
    assert (cfg.train.max_steps, cfg.train.precision, cfg.data.shards) == (
        3,
        "fp32",
        str(tmp_path / "shards"),
    )
