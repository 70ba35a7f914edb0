"""A miniature of `make demo` on the real embedded assets: every stage runs and hands over its output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
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
    # the baseline is written as the export is: every weight AutoModel wants, nothing it does not
    for model_dir in (run_dir / "export", out / "random_init"):
        _, info = AutoModel.from_pretrained(model_dir, output_loading_info=True)
        assert not info["missing_keys"] and not info["unexpected_keys"], (model_dir, info)

    metrics = sorted((out / "finetune" / "movies").glob("*/seed1/metrics.json"))
    assert [m.parent.parent.name for m in metrics] == ["minilmv2_lt1", "random-init", "teacher"]
    for path in metrics:
        assert 0.0 <= json.loads(path.read_text())["scores"]["dev"] <= 1.0
    assert "held-out accuracy" in printed and (out / "report" / "report.md").is_file()
    assert printed.count(" x teacher)") == 3  # teacher, distilled and random-init student: latency too


def test_tiny_demo_od_is_a_second_stage_from_the_hs_student(tmp_path):
    out = tmp_path / "demo"
    args = [
        "demo",
        "--profile",
        "tiny",
        "--device",
        "cpu",
        "--out",
        str(out),
        "--no-teacher",
        "--no-random-init",
    ]
    assert main([*args, "--objectives", "hs_uniform", "od"]) == 0
    cfg = yaml.safe_load((out / "distill-od" / "config.yaml").read_text())
    assert cfg["teacher"]["path"] == str(out / "teacher_mlm")  # the fitted MLM head
    assert cfg["student"]["init_from"] == str(out / "distill-hs_uniform" / "export")
    assert cfg["train"]["lr"] == pytest.approx(3e-4)  # the paper's OD stage
    assert json.loads((out / "teacher_mlm" / "mlm_head.json").read_text())["steps"] == 3
    records = (out / "distill-od" / "logs" / "metrics.jsonl").read_text().splitlines()
    assert "loss_od" in json.loads(records[-1])
    metrics = sorted((out / "finetune" / "movies").glob("*/seed1/metrics.json"))
    assert [m.parent.parent.name for m in metrics] == ["hs_uniform", "od"]


def test_demo_od_without_a_first_stage_fails_before_any_work(tmp_path, capsys):
    assert main(["demo", "--profile", "tiny", "--out", str(tmp_path / "d"), "--objectives", "od"]) == 2
    assert "list an HS objective before it" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_demo_distill_config_composes_student_objective_and_overrides(tmp_path):
    from pretrain_distill.commands.demo import PROFILES, distill_config

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


@pytest.mark.parametrize("name", ["tiny", "cpu", "gpu"])
def test_every_profile_builds_its_default_run(name, tmp_path):
    """Each profile's default student composes with the default objective on its device."""
    from pretrain_distill.commands.demo import PROFILES, distill_config

    profile = PROFILES[name]
    device = "cuda" if name == "gpu" else "cpu"
    cfg = distill_config(tmp_path, profile.student, "minilmv2_lt1", profile, device, tmp_path / "shards")
    assert (
        cfg.train.max_steps == profile.distill_steps and cfg.train.micro_batch_size == profile.distill_batch
    )
    assert cfg.train.precision == ("bf16" if device == "cuda" else "fp32")
    assert cfg.objective.teacher_layer == "L_T-1" and cfg.objective.relation_heads == 12


def test_a_preempted_demo_exits_75_and_says_a_rerun_continues(tmp_path, monkeypatch, capsys):
    from pretrain_distill.commands import demo
    from pretrain_distill.engine import Preempted

    def preempted(cfg):
        raise Preempted("SIGTERM", Path(cfg.train.output_dir) / "checkpoints" / "step_00000002")

    monkeypatch.setattr(demo, "train", preempted)
    out = tmp_path / "demo"
    assert main(["demo", "--profile", "tiny", "--device", "cpu", "--out", str(out)]) == 75
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"pretrain-distill demo: SIGTERM received: saved {out / 'distill' / 'checkpoints' / 'step_00000002'}; "
        "rerun the same command to continue"
    )


def test_the_gpu_profile_on_a_cpu_says_how_long_it_takes(tmp_path, monkeypatch, capsys):
    from pretrain_distill.commands import demo

    monkeypatch.setattr(demo, "main_job", lambda request: {})  # the note comes before any work
    assert main(["demo", "--profile", "gpu", "--device", "cpu", "--out", str(tmp_path / "demo")]) == 0
    assert "the gpu profile on a CPU takes hours" in capsys.readouterr().err
