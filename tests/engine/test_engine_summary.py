"""`pretrain-distill train` prints a start-up summary and exports through the end-of-run hook."""

from __future__ import annotations

import json

from engine_helpers import tiny_config, tiny_overrides

from pretrain_distill import cli
from pretrain_distill.engine.summary import startup_summary
from pretrain_distill.models import build_student


def test_summary_states_what_is_trained_on_how_much(tiny_teacher_dir, tiny_shards, tmp_path):
    from transformers import AutoConfig

    cfg = tiny_config(
        tiny_teacher_dir, tiny_shards, tmp_path / "run", "train.grad_accum=3", "train.max_steps=10"
    )
    student = build_student([2, 2, 32, 64], AutoConfig.from_pretrained(tiny_teacher_dir))
    manifest = {"totals": {"sequences": 50, "tokens": 1500}}
    text = startup_summary(cfg, student, [(1,), (2,)], 10, 2, manifest)
    lines = dict(line.split(maxsplit=1) for line in text.splitlines())
    params = sum(p.numel() for p in student.bert.parameters())  # the MLM student has no pooler
    assert lines["teacher"] == str(tiny_teacher_dir)
    assert lines["student"].startswith(f"[layers, heads, hidden, ffn] = [2, 2, 32, 64], {params / 1e6:.2f}M")
    assert lines["student"].endswith("init random, family BERT")
    assert lines["objective"] == "hs x 1"
    assert lines["mapping"] == "[[1], [2]] (uniform)"
    assert lines["batch"].startswith("24 sequences per step = 4 micro x 3 accumulation x 2 ranks")
    # 10 steps x 24 sequences x 30 tokens per sequence
    assert lines["length"] == f"10 steps, ~7,200 tokens (30 per sequence in {tiny_shards})"
    assert lines["output"] == str(tmp_path / "run")


def test_train_command_prints_the_summary_and_exports(tiny_teacher_dir, tiny_shards, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", *tiny_overrides(tiny_teacher_dir, tiny_shards, out, "train.max_steps=2")]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "teacher    " in printed and "mapping    [[1], [2]] (uniform)" in printed
    assert "length     2 steps" in printed and f"output     {out}" in printed
    assert json.loads((out / "export" / "config.json").read_text())["architectures"] == ["BertModel"]
