"""``export --format onnx [--quantize int8]``: the graph ONNX Runtime runs agrees with PyTorch on a padded
batch of real sentences (1e-4 at real tokens), its int8 copy is smaller and close, a pruned student's
ONNX export reads text through the rewritten tokenizer, and wrong option combinations exit 2."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModel, AutoTokenizer

from pretrain_distill import cli
from pretrain_distill.core.assets import movie_sentences_path
from pretrain_distill.engine import train
from pretrain_distill.export.onnx import FP32_TOLERANCE, run_session, session
from pretrain_distill.vocab import StudentVocab

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "engine"))
from engine_helpers import tiny_config  # noqa: E402


@pytest.fixture(scope="module")
def pruned_run(tiny_teacher_dir, movie_shards, tmp_path_factory):
    shards, _ = movie_shards("onnx_shards", 6000)
    out = tmp_path_factory.mktemp("onnx") / "run"
    extra = ("student.vocab=corpus", "student.vocab_min_count=2", "train.max_steps=2", "train.export=false")
    return train(tiny_config(tiny_teacher_dir, shards, out, *extra))


def test_onnx_and_int8_agree_with_pytorch_on_a_padded_batch(pruned_run, tmp_path, capsys):
    out = tmp_path / "onnx"
    argv = ["export", str(pruned_run), "--format", "onnx", "--quantize", "int8", "--out", str(out)]
    assert cli.main(argv) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert {"model.onnx", "model_quantized.onnx", "config.json", "tokenizer.json", "student_vocab.json"} <= {
        p.name for p in out.iterdir()
    }
    report = json.loads((out / "onnx_report.json").read_text())
    assert report["fp32"]["max_abs_diff"] <= FP32_TOLERANCE and report["int8"]["mean_cosine"] > 0.95
    assert (out / "model_quantized.onnx").stat().st_size < (out / "model.onnx").stat().st_size

    # Independently of the export's own check: other sentences, other lengths, padded.
    lines = movie_sentences_path().read_text(encoding="utf-8", errors="replace").splitlines()
    texts = [line.split("\t")[-1] for line in lines[100:106]] + ["ok", "北京 🙂"]
    tokenizer = AutoTokenizer.from_pretrained(out)
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    vocab = StudentVocab.load(out)
    assert int(batch["input_ids"].max()) < vocab.size and (batch["attention_mask"] == 0).any()
    model = AutoModel.from_pretrained(pruned_run / "checkpoints" / "step_00000002" / "student").eval()
    with torch.no_grad():
        expected = model(**batch).last_hidden_state.numpy()
    real = batch["attention_mask"].numpy().astype(bool)
    got = run_session(session(out / "model.onnx"), batch)
    assert np.abs(got - expected)[real].max() <= FP32_TOLERANCE
    int8 = run_session(session(out / "model_quantized.onnx"), batch)[real]
    cosine = (
        (int8 * expected[real]).sum(-1)
        / np.linalg.norm(int8, axis=-1)
        / np.linalg.norm(expected[real], axis=-1)
    )
    assert cosine.mean() > 0.95


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--quantize", "int8"], "only --quantize int8, with --format onnx"),
        (["--format", "onnx", "--with-mlm-head"], "base encoder only"),
    ],
)
def test_wrong_combinations_exit_2(pruned_run, tmp_path, capsys, extra, message):
    assert cli.main(["export", str(pruned_run), "--out", str(tmp_path / "x"), *extra]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
