"""Engine fixtures: tiny shards prepared by the data module from a few KB of real text (the tiny saved
teacher and the shard factory ``movie_shards`` are shared fixtures of tests/conftest.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# pytest runs with --import-mode=importlib (no sys.path changes): make engine_helpers importable.
sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(scope="session")
def tiny_shards(movie_shards) -> Path:
    """About 6 KB of real movie-review sentences packed into 32-token sequences."""
    return movie_shards("shards", 6000)[0]


@pytest.fixture(scope="session")
def one_batch_shards(movie_shards) -> Path:
    """Just enough text for a handful of sequences: every step sees the same (fixed) batch."""
    return movie_shards("one_batch", 250)[0]
