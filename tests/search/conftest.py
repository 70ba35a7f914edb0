"""Search / latency fixtures: tiny shards in three shard files (one to hold out); the tiny teacher is shared."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def three_shards(movie_shards) -> Path:
    """About 6 KB of real movie-review sentences, 32-token sequences, in three shards."""
    out, manifest = movie_shards("three_shards", 6000, shard_chars=2100)
    assert len(manifest["shards"]) == 3, manifest["shards"]
    return out
