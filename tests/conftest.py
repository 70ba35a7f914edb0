"""Shared fixtures: tiny random encoders for unit tests, the real embedded teacher for integration tests.

Area-specific fixtures live in ``tests/<area>/conftest.py``.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """One intra-op thread: the tiny test models gain nothing from more, and OpenMP spin-waiting makes
    them 10-50x slower whenever another process competes for the 2 cores."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def teacher_dir():
    """Local directory of the real all-MiniLM-L6-v2 teacher (BertModel 6x384, 12 heads)."""
    from pretrain_distill.core.assets import teacher_path

    return teacher_path()


@pytest.fixture(scope="session")
def tokenizer(teacher_dir):
    """The teacher's real fast WordPiece tokenizer (bert-base-uncased vocab, 30522)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(teacher_dir)


@pytest.fixture(scope="session")
def tiny_teacher_dir(tmp_path_factory, tokenizer):
    """A 2-layer, 64-wide, 4-head BertForMaskedLM (random weights, so it has an MLM head) + the real
    tokenizer, saved as a model directory."""
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
def movie_shards(tmp_path_factory, tokenizer):
    """Factory ``make(name, chars, **prepare_options) -> (shard dir, manifest)``: the first ``chars``
    characters (whole lines) of the real movie-review sentences, one document a line, prepared into
    32-token sequences by ``prepare_shards`` (``prepare_options``: shard_chars, validation_fraction, ...)."""
    from pretrain_distill.core.assets import movie_sentences_path
    from pretrain_distill.data import prepare_shards

    sentences = [
        line.split("\t")[-1]
        for line in movie_sentences_path().read_text(encoding="utf-8", errors="replace").splitlines()
    ]

    def make(name: str, chars: int, **options):
        lines = []
        for line in sentences:
            lines.append(line)
            if sum(map(len, lines)) > chars:
                break
        src = tmp_path_factory.mktemp(f"{name}_text") / "corpus.txt"
        src.write_text("\n".join(lines) + "\n")
        out = tmp_path_factory.mktemp(name)
        options = {"max_length": 32, "workers": 1, "progress": False, **options}
        return out, prepare_shards([f"text:{src}#doc=line"], out, tokenizer=tokenizer, **options)

    return make


@pytest.fixture
def tiny_bert_config():
    """A 2-layer, 64-wide BERT config with the real vocab: plenty for unit tests on 2 CPU cores."""
    from transformers import BertConfig

    return BertConfig(
        vocab_size=30522,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=128,
    )
