"""Seed derivation: every random stream of a run is a function of a few counters (seed, epoch, step,
rank, ...), never of the order in which things happened, so a resumed run redraws exactly what an
uninterrupted run would have drawn.

The counters are hashed by NumPy's ``SeedSequence`` (well mixed: nearby tuples give unrelated streams).
"""

from __future__ import annotations

import numpy as np
import torch


def derive_seed(*keys: int) -> int:
    """A 32-bit seed that depends on ``keys`` only."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1)[0])


def numpy_rng(*keys: int) -> np.random.Generator:
    """A NumPy generator seeded by ``keys`` (the same stream as ``np.random.default_rng(list(keys))``)."""
    return np.random.default_rng(np.random.SeedSequence([int(k) for k in keys]))


def torch_generator(*keys: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A torch generator on ``device`` seeded by :func:`derive_seed` of ``keys``."""
    return torch.Generator(device).manual_seed(derive_seed(*keys))
