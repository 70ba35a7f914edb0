"""Engine fixtures: a tiny saved teacher (2-layer, 64-wide BertForMaskedLM with the real tokenizer) and
tiny shards prepared by the data module from a few KB of real text."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# pytest runs with --import-mode=importlib (no sys.path changes): make engine_helpers importable.
sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(scope="session")
def tiny_teacher_dir(tmp_path_factory, tokenizer) -> Path:
    """A 2-layer, 64-wide BertForMaskedLM (random weights, so it has an MLM head) + the real tokenizer."""
    import torch
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=64,
    )
    path = tmp_path_factory.mktemp("tiny_teacher")
    BertForMaskedLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _text(chars: int) -> str:
    from pretrain_distill.assets import movie_sentences_path

    lines = []
    for line in movie_sentences_path().read_text(encoding="utf-8", errors="replace").splitlines():
        lines.append(line.split("\t")[-1])
        if sum(map(len, lines)) > chars:
            break
    return "\n".join(lines) + "\n"


def _prepare(tmp_path_factory, name: str, chars: int, tokenizer) -> Path:
    from pretrain_distill.data import prepare_shards

    src = tmp_path_factory.mktemp(f"{name}_text") / "corpus.txt"
    src.write_text(_text(chars))
    out = tmp_path_factory.mktemp(name)
    prepare_shards(
        [f"text:{src}#doc=line"], out, tokenizer=tokenizer, max_length=32, workers=1, progress=False
    )
    return out


@pytest.fixture(scope="session")
def tiny_shards(tmp_path_factory, tokenizer) -> Path:
    """About 6 KB of real movie-review sentences packed into 32-token sequences."""
    return _prepare(tmp_path_factory, "shards", 6000, tokenizer)


@pytest.fixture(scope="session")
def one_batch_shards(tmp_path_factory, tokenizer) -> Path:
    """Just enough text for a handful of sequences: every step sees the same (fixed) batch."""
    return _prepare(tmp_path_factory, "one_batch", 250, tokenizer)
