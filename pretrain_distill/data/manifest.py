"""The manifest of a prepared shard directory (``manifest.json``): what the reader needs to trust and
split the shards (counts per shard and language, the tokenizer's ids and checksum, the settings)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pretrain_distill.core.errors import ConfigError
from pretrain_distill.data.errors import DataError

MANIFEST = "manifest.json"
PROGRESS = "progress.jsonl"  # settings line + one line per finished unit; removed when complete
VALIDATION = "validation"  # sub-directory of the held-out shards (a shard directory of its own)


def load_manifest(shard_dir: str | Path) -> dict[str, Any]:
    """The manifest of a finished preparation; raises :class:`DataError` when there is none."""
    path = Path(shard_dir) / MANIFEST
    if not path.exists():
        hint = " (preparation unfinished: run prepare again)" if (Path(shard_dir) / PROGRESS).exists() else ""
        raise DataError(f"{path}: no manifest{hint}; create it with `pretrain-distill prepare`")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON: {err}") from err


def check_tokenizer(manifest: dict[str, Any], tokenizer: Any) -> None:
    """The shards must have been tokenized with the run's tokenizer (same vocabulary size and special ids)."""
    shard_tok = manifest["tokenizer"]
    ours = {
        "vocab_size": len(tokenizer),
        **{f"{role}_id": getattr(tokenizer, f"{role}_token_id") for role in ("cls", "sep", "pad", "mask")},
    }
    diff = {k: (shard_tok.get(k), v) for k, v in ours.items() if shard_tok.get(k) != v}
    if diff:
        detail = ", ".join(f"{k}: shards {a}, run {b}" for k, (a, b) in diff.items())
        raise ConfigError(
            f"data.shards were prepared with tokenizer {shard_tok.get('name')!r}, which differs from the run's "
            f"({detail}): prepare the shards with the teacher's tokenizer or set teacher.tokenizer"
        )
