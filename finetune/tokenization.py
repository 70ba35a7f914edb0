"""Tokenisation: ``text_a`` / ``text_b`` / ``label`` datasets -> ``input_ids`` / masks / ``labels``
(batched with dynamic padding by the Trainer's ``DataCollatorWithPadding``)."""

from __future__ import annotations

import datasets
from transformers import PreTrainedTokenizerBase


def encode(ds: datasets.Dataset, tokenizer: PreTrainedTokenizerBase, max_length: int) -> datasets.Dataset:
    """Tokenise (truncating pairs longest-first to ``max_length``); keeps ``input_ids``, masks, ``labels``."""
    pair = "text_b" in ds.column_names

    def tokenize(batch: dict) -> dict:
        texts = (batch["text_a"], batch["text_b"]) if pair else (batch["text_a"],)
        return tokenizer(*texts, truncation=True, max_length=max_length)

    out = ds.map(tokenize, batched=True, remove_columns=[c for c in ds.column_names if c != "label"])
    return out.rename_column("label", "labels")


def limit(ds: datasets.Dataset, n: int | None, seed: int | None = None) -> datasets.Dataset:
    """The first ``n`` examples (after a shuffle with ``seed`` when given); all when ``n`` is None."""
    if n is None or n >= len(ds):
        return ds
    if n <= 0:
        raise ValueError(f"sample limit must be positive, got {n}")
    return (ds.shuffle(seed=seed) if seed is not None else ds).select(range(n))
