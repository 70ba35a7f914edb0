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
    from pretrain_distill.assets import teacher_path

    return teacher_path()


@pytest.fixture(scope="session")
def tokenizer(teacher_dir):
    """The teacher's real fast WordPiece tokenizer (bert-base-uncased vocab, 30522)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(teacher_dir)


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
