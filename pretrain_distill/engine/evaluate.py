"""Held-out evaluation: the Distiller's loss terms on a fixed set of validation batches.

The validation set is the first ``eval_batches`` micro-batches of the held-out shards' epoch-0 order
(``prepare --validation-fraction`` / ``--validation-source`` write them to ``<shards>/validation``),
read once at start-up: the same sequences whatever the world size. Rank ``r`` of ``W`` evaluates
batches ``r, r + W, ...``; the per-term sums are all-reduced, so the result equals the one-rank value.
Batch ``i`` is masked with a generator seeded by ``(seed, i)`` only: the same masks at every
evaluation, on every rank layout. Nothing here touches the training loader or the global RNGs.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from pretrain_distill.core.errors import ConfigError
from pretrain_distill.core.seeds import derive_seed
from pretrain_distill.data.manifest import MANIFEST
from pretrain_distill.data.stream import ShardStream, collate
from pretrain_distill.run_config import DataConfig

Batch = tuple[int, dict[str, torch.Tensor]]  # (index in the validation set, batch)
VALIDATION_DIR = "validation"  # where prepare writes the held-out shards, under data.shards


def prepared_validation(shards: str | Path) -> Path | None:
    """The held-out split ``prepare`` wrote under ``shards`` (``<shards>/validation``), or None."""
    split = Path(shards) / VALIDATION_DIR
    return split if (split / MANIFEST).is_file() else None


def validation_dir(data_cfg: DataConfig) -> Path | None:
    """``data.validation`` as a shard directory: ``""`` = ``<shards>/validation`` when present, else
    none; ``"none"`` = none; anything else must be a prepared shard directory."""
    if data_cfg.validation == "none":
        return None
    if not data_cfg.validation:
        return prepared_validation(data_cfg.shards)
    path = Path(data_cfg.validation)
    if not (path / MANIFEST).is_file():
        raise ConfigError(
            f"data.validation: {path} holds no manifest.json; prepare one with `pretrain-distill prepare "
            "--validation-fraction F` (or --validation-source), or set data.validation=none"
        )
    return path


def load_validation_batches(
    shard_dir: str | Path,
    batch_size: int,
    max_batches: int,
    rank: int = 0,
    world_size: int = 1,
    seed: int = 0,
    expect_tokenizer: str | None = None,
) -> list[Batch]:
    """This rank's share of the validation set: ``(index, batch)`` for ``index % world_size == rank``.

    ``expect_tokenizer``: the training shards' tokenizer sha256 (the held-out shards must match).
    """
    stream = ShardStream(shard_dir, batch_size, rank=0, world_size=1, num_workers=0, seed=seed)
    found = stream.manifest["tokenizer"]["sha256"]
    if expect_tokenizer is not None and found != expect_tokenizer:
        raise ConfigError(
            f"data.validation: {shard_dir} was prepared with another tokenizer than data.shards"
        )
    count = min(max_batches, stream.steps_per_epoch)
    if count < world_size:
        raise ConfigError(
            f"data.validation: {shard_dir} gives {count} batches of {batch_size}, fewer than the "
            f"{world_size} ranks: hold out more data or raise train.eval_batches"
        )
    rows = itertools.islice(stream.worker_batches(0, 0), count)
    return [(i, collate(r)) for i, r in enumerate(rows) if i % world_size == rank]


def batch_seed(seed: int, index: int) -> int:
    """Masking seed of validation batch ``index``: a function of ``(seed, index)`` only."""
    return derive_seed(seed, index, 0x5EED)


@torch.no_grad()
def evaluate(
    distiller: torch.nn.Module,
    batches: Iterable[Batch],
    masker: Callable[..., tuple[torch.Tensor, torch.Tensor]] | None,
    device: torch.device,
    seed: int,
    forward: Callable[..., dict[str, torch.Tensor]] | None = None,
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, float]:
    """Mean of each loss term and of the total over ``batches``: ``{"val_loss", "val_loss_<term>"}``.

    ``distiller`` is put in eval mode for the pass (and back); ``forward`` (default: the distiller;
    the DeepSpeed engine in training) computes the losses; ``reduce`` sums a tensor over ranks (the
    batches are then each rank's share and the means are global). Every rank needs one batch at least.
    """
    forward = forward or distiller
    training = distiller.training
    distiller.eval()
    sums: dict[str, float] = {}
    count = 0
    try:
        for index, batch in batches:
            input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]
            labels = None
            if getattr(distiller, "needs_masking", False):
                generator = torch.Generator()  # masks drawn on the host, as in training
                generator.manual_seed(batch_seed(seed, index))
                input_ids, labels = masker(input_ids, attention_mask, generator)
            for key, value in forward(input_ids.to(device), attention_mask, labels).items():
                sums[key] = sums.get(key, 0.0) + float(value)
            count += 1
    finally:
        distiller.train(training)
    if not count:
        raise ValueError("evaluate: no validation batch on this rank")
    keys = sorted(sums)
    totals = torch.tensor([sums[k] for k in keys] + [float(count)], dtype=torch.float64)
    if reduce is not None:
        totals = reduce(totals.to(device)).cpu()
    values: list[Any] = totals.tolist()
    return {("val_loss" if k == "loss" else f"val_loss_{k}"): v / values[-1] for k, v in zip(keys, values)}
