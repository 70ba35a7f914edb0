"""The real all-MiniLM-L6-v2 teacher fine-tuned on real movie-review sentences beats chance.

Settings: 400 sentences, 2 epochs at batch 16 (50 steps), LR 1e-4, max length 32 (these sentences
average about 25 tokens), 200 held-out sentences; seeds 1-3 gave 0.73-0.79 dev accuracy.
"""

from __future__ import annotations

import json

import pytest

from finetune.cli import main


@pytest.mark.integration
def test_minilm_on_movie_sentences_beats_chance(tmp_path, teacher_dir):
    argv = ["train", "--model", str(teacher_dir), "--task", "movies", "--seeds", "1", "--epochs", "2"]
    argv += ["--max-train-samples", "400", "--max-eval-samples", "200", "--max-length", "32"]
    argv += ["--output-dir", str(tmp_path), "--no-progress", "batch_size=16", "lr=1e-4", "save_model=false"]
    assert main(argv) == 0
    (path,) = tmp_path.rglob("metrics.json")
    metrics = json.loads(path.read_text())
    assert metrics["train_examples"] == 400 and metrics["steps"] == 50
    # 200 held-out sentences, about half positive: 0.62 is > 3 standard errors above chance
    assert metrics["eval"]["dev"]["accuracy"] > 0.62, metrics["eval"]
