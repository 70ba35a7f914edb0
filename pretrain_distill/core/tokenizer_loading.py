"""Every tokenizer of the project is loaded here, and refused when it cannot be the model's.

transformers 5, given a model directory whose vocabulary files are missing (a cache another process was
still filling, a copy that left them out), does not fail: it builds a ``BertTokenizer`` of the 5 special
tokens that maps every word to ``[UNK]``, and a run then trains on nothing but unknown tokens. Two
checks catch that, and never refuse a real model:

- the tokenizer must know at least one token that is not a special token;
- it may be smaller than the model's embedding table only by the rows a model pads that table with
  (up to a multiple of at most 1024: BERT pads none, ModernBERT 88 rows, DeBERTa-v3 99, Phi-2 905).
"""

from __future__ import annotations

import json
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase

EMBEDDING_PADDING = 1024
"""Rows an embedding table may hold beyond its tokenizer's vocabulary (rounding up to a multiple)."""


class TokenizerMismatchError(ValueError):
    """A tokenizer that cannot be the model's: no vocabulary, or far smaller than its embedding table."""


def _embedding_rows(model_dir: str | Path) -> int | None:
    """The ``vocab_size`` of a local model directory's ``config.json`` (None when there is none)."""
    config = Path(model_dir) / "config.json"
    if not config.is_file():
        return None
    return json.loads(config.read_text()).get("vocab_size")


def load_tokenizer(path: str | Path, model_dir: str | Path | None = None) -> PreTrainedTokenizerBase:
    """``AutoTokenizer.from_pretrained(path)``, refused (:class:`TokenizerMismatchError`, one line naming
    the directory and the sizes) when it has no vocabulary beyond its special tokens, or is smaller than
    the embedding table of the model in ``model_dir`` (default: ``path``, when it is a model directory)
    by more than :data:`EMBEDDING_PADDING` rows (see the module docstring)."""
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    size, special = len(tokenizer), len(set(tokenizer.all_special_ids))
    if size <= special:
        raise TokenizerMismatchError(
            f"the tokenizer in {path} holds only its {special} special tokens: its vocabulary files "
            "(vocab.txt / tokenizer.json / ...) are missing; copy the model directory again"
        )
    model_dir = Path(model_dir if model_dir is not None else path)
    rows = _embedding_rows(model_dir)
    if rows is not None and size + EMBEDDING_PADDING <= rows:
        raise TokenizerMismatchError(
            f"the tokenizer in {path} has {size} tokens but the model's embedding table has {rows} rows "
            f"({model_dir / 'config.json'}): its vocabulary files are missing or belong to another model"
        )
    return tokenizer
