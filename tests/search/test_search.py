"""`pretrain-distill search`: the KD-NAS reward, candidate checks, the held-out split, validation losses,
and a 3-candidate search on tiny models end to end, preempted mid-candidate and resumed."""

from __future__ import annotations

import json
import os
import signal
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from pretrain_distill import cli
from pretrain_distill.core.errors import ConfigError
from pretrain_distill.core.metrics_log import MetricsLogger, read_metrics
from pretrain_distill.engine import EXIT_PREEMPTED
from pretrain_distill.engine.checkpoint import CheckpointStore
from pretrain_distill.latency import LatencySettings, teacher_config
from pretrain_distill.search import (
    Candidate,
    SearchSettings,
    check_candidates,
    held_out_losses,
    kd_nas_reward,
    ranked,
    search,
    split_shards,
)


def test_reward_against_hand_computed_values():
    # L_HS 0.25, lat(S) 10 ms, lat(T) 50 ms: 0.75 * (10 / 30)^-0.06 = 0.75 * 3^0.06 = 0.75 * 1.0681380
    assert kd_nas_reward(0.25, 10.0, 50.0) == pytest.approx(0.8011035, abs=1e-6)
    assert kd_nas_reward(0.4, 30.0, 50.0) == pytest.approx(0.6)  # at the target latency: 1 - L_HS
    assert kd_nas_reward(0.4, 15.0, 50.0) > kd_nas_reward(0.4, 30.0, 50.0)  # faster is better
    assert kd_nas_reward(0.3, 30.0, 50.0) > kd_nas_reward(0.4, 30.0, 50.0)  # lower loss is better
    with pytest.raises(ValueError, match="latencies must be > 0"):
        kd_nas_reward(0.1, 0.0, 50.0)


def test_candidates_are_parsed_and_deduplicated_by_shape(tiny_teacher_dir):
    config = teacher_config(str(tiny_teacher_dir))
    got = check_candidates(["1,2,32,64", "2,4,64,128"], config, "single", "random")
    assert got == [Candidate("1,2,32,64", (1, 2, 32, 64)), Candidate("2,4,64,128", (2, 4, 64, 128))]
    assert got[0].key == "L1-A2-H32-F64"
    other = check_candidates(["1,2,32,64", "modernbert:1,2,32,64"], config, "single", "random")[1]
    assert (other.key, other.target) == ("modernbert-L1-A2-H32-F64", "modernbert:1,2,32,64")
    with pytest.raises(ConfigError, match="modernbert:2,4,64,128: student.init=teacher .* another family"):
        check_candidates(["modernbert:2,4,64,128"], config, "single", "teacher")


def test_every_bad_candidate_is_rejected_with_its_reason(tiny_teacher_dir):
    config = teacher_config(str(tiny_teacher_dir))  # 2 layers, 4 heads, 64 wide, ffn 128
    texts = ["1,2,32,64", "2,3,64,128", "0,2,32,64", "big", "3,4,64,128", "1,2,32,64"]
    with pytest.raises(ConfigError) as info:
        check_candidates(texts, config, "last", "random")
    message = str(info.value)
    assert message.startswith("5 of 6 candidates rejected (nothing trained)")
    assert "2,3,64,128: student heads (3) must divide hidden (64)" in message
    assert "0,2,32,64: student layers must be a positive integer" in message
    assert "big: not a preset" in message
    assert (
        "3,4,64,128: the 'last' mapping needs num_student_layers <= num_teacher_layers, got 3 > 2" in message
    )
    assert "1,2,32,64: the same family and shape as 1,2,32,64" in message
    with pytest.raises(ConfigError, match=r"2,2,32,64: student.init=teacher needs the teacher's heads"):
        check_candidates(["2,4,64,128", "2,2,32,64"], config, "single", "teacher")
    with pytest.raises(ConfigError, match="3 layers > the teacher's 2"):
        check_candidates(["3,4,64,128"], config, "single", "teacher")


def test_holdout_split_writes_two_views(three_shards, tmp_path):
    train_dir, val_dir = split_shards(str(three_shards), None, 1, tmp_path)
    source = json.loads((three_shards / "manifest.json").read_text())["shards"]
    train = json.loads((Path(train_dir) / "manifest.json").read_text())
    val = json.loads((Path(val_dir) / "manifest.json").read_text())
    assert train["shards"] == source[:2] and val["shards"] == source[2:]
    assert train["totals"]["sequences"] == sum(s["sequences"] for s in source[:2])
    for entry in source[2:]:
        assert (Path(val_dir) / entry["name"]).resolve() == (three_shards / entry["name"]).resolve()
    assert split_shards(str(three_shards), None, 1, tmp_path) == (train_dir, val_dir)  # rerun: same views
    with pytest.raises(ConfigError, match="has 3 shard"):
        split_shards(str(three_shards), None, 3, tmp_path)
    assert split_shards(str(three_shards), val_dir, 1, tmp_path / "x") == (str(three_shards), val_dir)


def test_a_prepared_validation_split_is_the_default_validation_data(movie_shards, tmp_path):
    """One shard + the held-out split `prepare --validation-fraction` wrote: search trains on the shard and
    validates on the split (the README's prepare-then-search), where --holdout would need two shards."""
    shards, manifest = movie_shards("one_shard_held_out", 3000, validation_fraction=0.2)
    assert len(manifest["shards"]) == 1
    assert split_shards(str(shards), None, 1, tmp_path) == (str(shards), str(shards / "validation"))


def test_held_out_losses_average_eval_mode_and_restore_mode(tiny_teacher_dir, three_shards, tmp_path):
    from types import SimpleNamespace

    from pretrain_distill.engine.evaluate import load_validation_batches
    from pretrain_distill.models import build_student, build_teacher
    from pretrain_distill.objectives import Distiller
    from pretrain_distill.run_config import ObjectiveConfig, TeacherConfig

    teacher = build_teacher(TeacherConfig(path=str(tiny_teacher_dir)))
    torch.manual_seed(0)
    student = build_student([1, 2, 32, 64], teacher.config)
    student.config.hidden_dropout_prob = 0.5
    distiller = Distiller(ObjectiveConfig(weights={"hs": 1.0}, mapping="single"), student, teacher).train()
    cfg = SimpleNamespace(train=SimpleNamespace(micro_batch_size=4, seed=1))
    losses = held_out_losses(distiller, str(three_shards), cfg, 3, torch.device("cpu"))
    assert distiller.training  # mode restored
    batches = [b for _, b in load_validation_batches(str(three_shards), 4, 3, seed=1)]
    assert len(batches) == 3
    distiller.eval()
    with torch.no_grad():
        expected = sum(float(distiller(b["input_ids"], b["attention_mask"])["hs"]) for b in batches) / 3
    assert losses["hs"] == pytest.approx(expected, rel=1e-6) and losses["loss"] == pytest.approx(expected)
    distiller.train()
    assert held_out_losses(distiller, str(three_shards), cfg, 3, torch.device("cpu")) == losses  # no dropout


def _settings(teacher: Path, shards: Path, **changes) -> SearchSettings:
    settings = SearchSettings(
        teacher=str(teacher),
        shards=str(shards),
        val_shards=None,
        holdout=1,
        steps=4,
        batch=4,
        val_batches=2,
        mapping="single",
        device="cpu",
        configs=(),
        overrides=("data.num_workers=0", "data.shuffle_buffer=64", "train.lr=1e-3"),
        latency=LatencySettings(seq=16, warmup=1, repeats=3),
    )
    return replace(settings, **changes)


def _cli_args(teacher: Path, shards: Path, out: Path, candidates: list[str]) -> list[str]:
    return [
        "search", "--teacher", str(teacher), "--shards", str(shards), "--out", str(out), "--steps", "4",
        "--batch", "4", "--val-batches", "2", "--device", "cpu", "--candidates", *candidates,
        "data.num_workers=0", "data.shuffle_buffer=64", "train.lr=1e-3",
        "--latency-seq", "16", "--latency-warmup", "1", "--latency-repeats", "3",
    ]  # fmt: skip


CANDIDATES = ["1,2,32,64", "2,2,32,64", "2,4,64,128"]


def test_three_candidate_search_preempted_then_resumed(
    tiny_teacher_dir, three_shards, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "search"
    original = MetricsLogger.log

    def log_then_signal(self, step, metrics):
        original(self, step, metrics)
        if step == 2 and "L2-A2-H32-F64" in str(self.path):
            os.kill(os.getpid(), signal.SIGTERM)  # preempted in the middle of the second candidate

    monkeypatch.setattr(MetricsLogger, "log", log_then_signal)
    assert cli.main(_cli_args(tiny_teacher_dir, three_shards, out, CANDIDATES)) == EXIT_PREEMPTED
    state = json.loads((out / "search.json").read_text())
    assert list(state["candidates"]) == ["L1-A2-H32-F64"]  # the first one finished and recorded
    first = state["candidates"]["L1-A2-H32-F64"]
    first_log = (out / "candidates" / "L1-A2-H32-F64" / "logs" / "metrics.jsonl").read_text()
    second = out / "candidates" / "L2-A2-H32-F64"
    assert [s for s, _ in CheckpointStore(second / "checkpoints", 1).complete()] == [3]  # end of that step
    assert not (out / "candidates" / "L2-A4-H64-F128").exists()

    monkeypatch.setattr(MetricsLogger, "log", original)
    capsys.readouterr()
    assert cli.main(_cli_args(tiny_teacher_dir, three_shards, out, CANDIDATES)) == 0
    printed, progress = capsys.readouterr()
    state = json.loads((out / "search.json").read_text())
    assert state["candidates"]["L1-A2-H32-F64"] == first  # not re-run, not re-measured
    assert (out / "candidates" / "L1-A2-H32-F64" / "logs" / "metrics.jsonl").read_text() == first_log
    assert [r["step"] for r in read_metrics(second / "logs" / "metrics.jsonl")] == [1, 2, 3, 4]  # resumed
    assert "done before, kept" in progress and "done before" not in printed  # stdout: the result only

    rows = ranked(state)
    assert sorted(r["name"] for r in rows) == sorted(CANDIDATES)
    assert [r["reward"] for r in rows] == sorted((r["reward"] for r in rows), reverse=True)
    for r in rows:
        assert 0 < r["hs_loss"] == r["val_losses"]["hs"] and r["latency"]["repeats"] == 3
        lat, teacher_ms = r["latency"]["median_ms"], r["teacher_latency"]["median_ms"]
        assert r["reward"] == pytest.approx((1 - r["hs_loss"]) * (lat / (0.6 * teacher_ms)) ** -0.06)
    table = (out / "search.md").read_text()
    assert table in printed
    lines = table.splitlines()
    assert len([line for line in lines if line.startswith("| ") and line[2].isdigit()]) == 3
    assert lines[2].startswith(f"| 1 | {rows[0]['name']} |")


def test_resume_refuses_other_settings_and_bad_candidates_train_nothing(
    tiny_teacher_dir, three_shards, tmp_path
):
    out = tmp_path / "search"
    with pytest.raises(ConfigError, match="1 of 2 candidates rejected"):
        search(_settings(tiny_teacher_dir, three_shards), ["1,2,32,64", "1,3,32,64"], out)
    assert not out.exists()  # rejected before anything was written or trained
    with pytest.raises(ConfigError, match="HS only"):
        search(
            _settings(tiny_teacher_dir, three_shards, overrides=("objective.weights={minilmv2: 1.0}",)),
            ["1,2,32,64"],
            out,
        )
    with pytest.raises(ConfigError, match="may not change"):
        search(_settings(tiny_teacher_dir, three_shards, overrides=("student.layers=2",)), ["1,2,32,64"], out)
    assert not out.exists()
    out.mkdir()
    (out / "search.json").write_text(
        json.dumps({"settings": {**_settings(tiny_teacher_dir, three_shards).record(), "steps": 9}})
    )
    with pytest.raises(ConfigError, match=r"other settings \(steps: 9 -> 4\)"):
        search(_settings(tiny_teacher_dir, three_shards), ["1,2,32,64"], out)


@pytest.mark.parametrize(
    ("extra", "env", "message"),
    [(["--steps", "0"], {}, "--steps must be >= 1"), ([], {"RANK": "0", "WORLD_SIZE": "2"}, "one process")],
)
def test_command_line_mistakes_are_one_line_errors(extra, env, message, tmp_path, monkeypatch, capsys):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    args = ["search", "--teacher", "t", "--shards", "s", "--candidates", "3L", "--steps", "2"]
    assert cli.main([*args, "--out", str(tmp_path / "out"), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists()
