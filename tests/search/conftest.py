"""Search / latency fixtures: a tiny saved teacher and tiny shards in three shard files (one to hold out)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_teacher_dir(tmp_path_factory, tokenizer) -> Path:
    """A 2-layer, 64-wide, 4-head BertForMaskedLM (random weights) + the real tokenizer."""
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


@pytest.fixture(scope="session")
def three_shards(tmp_path_factory, tokenizer) -> Path:
    """About 6 KB of real movie-review sentences, 32-token sequences, in three shards."""
    from pretrain_distill.assets import movie_sentences_path
    from pretrain_distill.data import prepare_shards

    lines = movie_sentences_path().read_text(encoding="utf-8", errors="replace").splitlines()
    text = "\n".join(line.split("\t")[-1] for line in lines[:70]) + "\n"
    src = tmp_path_factory.mktemp("search_text") / "corpus.txt"
    src.write_text(text)
    out = tmp_path_factory.mktemp("three_shards")
    manifest = prepare_shards(
        [f"text:{src}#doc=line"],
        out,
        tokenizer=tokenizer,
        max_length=32,
        workers=1,
        shard_chars=len(text) // 3 + 1,
        progress=False,
    )
    assert len(manifest["shards"]) == 3, manifest["shards"]
    return out
