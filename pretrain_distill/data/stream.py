"""Training-time stream of prepared shards: exact split over ranks x workers, shuffling, exact resume.

``build_dataloader(data_cfg, batch_size, rank, world_size, seed)`` returns a :class:`ShardLoader`.
One pass of ``for batch in loader`` is one epoch of exactly ``len(loader)`` batches (the same count on
every rank); when it is exhausted the loader moves on to the next epoch by itself, and
``set_epoch(e)`` jumps to epoch ``e`` (a no-op for the epoch it is in, so a resumed mid-epoch
position is kept). The engine's loop is ``for e in ...: loader.set_epoch(e); for batch in loader``.

Order within an epoch (see :mod:`pretrain_distill.data.plan` for the split): each worker reads its
share of the epoch order in windows of ``shuffle_buffer`` sequences and emits each window in a
seeded random order (a bounded in-memory shuffle on top of the per-epoch shard order and the in-shard
shuffle done by ``prepare``). Because the window permutation depends only on the seed and the window's
position, a restart skips whole shards by their manifest counts and decodes only the current window.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from pretrain_distill.config import DataConfig
from pretrain_distill.data import plan
from pretrain_distill.data.errors import DataError
from pretrain_distill.data.prepare import load_manifest
from pretrain_distill.data.shards import read_rows

log = logging.getLogger(__name__)

Rows = tuple[np.ndarray, np.ndarray]  # (input_ids [n, T], lengths [n])


class ShardStream(IterableDataset):
    """The batches of one rank for one epoch, from ``start_step`` on; split over DataLoader workers."""

    def __init__(
        self,
        shard_dir: str | Path,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
        seed: int = 0,
        shuffle_buffer: int = 2048,
        language_alpha: float = 1.0,
        skip_bad_shards: bool = False,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        if batch_size < 1 or num_workers < 0 or shuffle_buffer < 1:
            raise ValueError("batch_size and shuffle_buffer must be >= 1, num_workers >= 0")
        self.shard_dir = Path(shard_dir)
        self.manifest = load_manifest(shard_dir)
        self.shards = [(s["language"], s["sequences"]) for s in self.manifest["shards"]]
        if not self.shards:
            raise DataError(f"{self.shard_dir}: the manifest lists no shards")
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size
        self.num_workers, self.seed, self.shuffle_buffer = num_workers, seed, shuffle_buffer
        self.language_alpha, self.skip_bad_shards = language_alpha, skip_bad_shards
        self.total = sum(plan.language_targets(self.language_counts, language_alpha).values())
        self.steps_per_epoch = plan.steps_per_epoch(self.total, world_size, batch_size)
        self.epoch = 0
        self.start_step = 0
        self.bad_shards: set[str] = set()

    @cached_property
    def language_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for language, n in self.shards:
            counts[language] = counts.get(language, 0) + n
        return counts

    def __iter__(self) -> Iterator[Rows]:
        info = get_worker_info()
        workers = max(self.num_workers, 1)
        physical = info.id if info is not None else 0
        if info is not None and info.num_workers != workers:
            raise RuntimeError(f"ShardStream built for {workers} workers runs in {info.num_workers}")
        # The DataLoader asks workers 0, 1, ... in turn from start_step on: rotate the roles so that
        # the worker asked for step i is the one whose share holds step i.
        logical = (physical + self.start_step) % workers
        return self.worker_batches(self.epoch, logical, self.start_step)

    def worker_batches(
        self, epoch: int, worker: int, start_step: int = 0
    ) -> Iterator[dict[str, torch.Tensor]]:
        """Worker ``worker``'s batches of ``epoch`` for the steps ``>= start_step``, in step order."""
        share = plan.worker_share(
            self.total, self.rank, self.world_size, self.batch_size, worker, max(self.num_workers, 1)
        )
        first = int(np.searchsorted(share.steps, start_step))
        offset = int(share.sizes[:first].sum())  # sequences of this worker's earlier steps
        pieces = plan.slice_pieces(
            plan.epoch_pieces(self.shards, self.language_alpha, self.seed, epoch), share.lo, share.hi
        )
        window = self.shuffle_buffer
        first_window = offset // window
        bounds = range(first_window * window, share.hi - share.lo, window)
        windows = (
            self._shuffle(rows, epoch, share.lo + lo)
            for rows, lo in zip(
                rebatch(self._read(pieces, first_window * window), _window_sizes(bounds, share)), bounds
            )
        )
        stream = drop_rows(windows, offset - first_window * window)  # earlier steps' sequences
        yield from rebatch(stream, share.sizes[first:].tolist())

    def _read(self, pieces: list[plan.Piece], skip: int) -> Iterator[Rows]:
        """The rows of ``pieces`` after the first ``skip`` (whole pieces skipped unread)."""
        for piece in plan.slice_pieces(pieces, skip, 1 << 62):
            entry = self.manifest["shards"][piece.shard]
            path = self.shard_dir / entry["name"]
            done = piece.start
            try:
                for ids, lengths in read_rows(
                    path,
                    piece.start,
                    piece.stop,
                    entry["sequences"],
                    self.manifest["block_size"],
                    self.manifest["max_length"],
                ):
                    done += len(ids)
                    yield ids, lengths
            except DataError as err:
                if not self.skip_bad_shards:
                    raise
                self.bad_shards.add(entry["name"])
                log.warning("skip_bad_shards: %s; %d bad shards skipped so far", err, len(self.bad_shards))
                missing = piece.stop - done  # placeholder rows (length 0), replaced per window
                yield np.zeros((missing, self.manifest["max_length"]), np.int32), np.zeros(missing, np.int32)

    def _shuffle(self, rows: Rows, epoch: int, position: int) -> Rows:
        """One shuffle window in its seeded order; rows of skipped shards replaced by good ones."""
        ids, lengths = rows
        rng = np.random.default_rng([self.seed, epoch, position])
        order = rng.permutation(len(ids))
        bad = lengths[order] == 0
        if bad.any():
            good = order[~bad]
            if not len(good):
                raise DataError(
                    f"{self.shard_dir}: a whole shuffle window at position {position} is unreadable"
                )
            order[bad] = rng.choice(good, size=int(bad.sum()))
        return ids[order], lengths[order]


def _window_sizes(bounds: range, share: plan.WorkerShare) -> list[int]:
    return [min(lo + bounds.step, share.hi - share.lo) - lo for lo in bounds]


def drop_rows(chunks: Iterable[Rows], count: int) -> Iterator[Rows]:
    """The stream of row arrays without its first ``count`` rows."""
    for ids, lengths in chunks:
        if count < len(ids):
            yield ids[count:], lengths[count:]
        count = max(count - len(ids), 0)


def rebatch(chunks: Iterable[Rows], sizes: Iterable[int]) -> Iterator[Rows]:
    """Regroup a stream of row arrays into consecutive pieces of exactly ``sizes`` rows."""
    chunks = iter(chunks)
    buffer: list[Rows] = []
    held = 0
    for size in sizes:
        while held < size:
            try:
                chunk = next(chunks)
            except StopIteration:
                raise DataError(f"data ran out: {held} rows left where {size} were planned") from None
            buffer.append(chunk)
            held += len(chunk[0])
        ids = np.concatenate([c[0] for c in buffer]) if len(buffer) > 1 else buffer[0][0]
        lengths = np.concatenate([c[1] for c in buffer]) if len(buffer) > 1 else buffer[0][1]
        yield ids[:size], lengths[:size]
        buffer = [(ids[size:], lengths[size:])] if held > size else []
        held -= size


def collate(rows: Rows | tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Batch dict: ``input_ids`` and ``attention_mask`` as LongTensors ``[B, T]``."""
    ids, lengths = (torch.as_tensor(np.asarray(a)) for a in rows)
    input_ids = ids.long()
    positions = torch.arange(input_ids.shape[1])
    attention_mask = (positions[None, :] < lengths.long()[:, None]).long()
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def _as_numpy(rows: Rows) -> Rows:
    """DataLoader collate_fn: ship the arrays as they are (numpy pickles compactly)."""
    return rows


class ShardLoader:
    """A rank's resumable loader: iterate for one epoch, ``state_dict()`` / ``load_state_dict()``."""

    def __init__(self, dataset: ShardStream) -> None:
        self.dataset = dataset
        self.epoch = 0
        self.step = 0  # batches of ``epoch`` already yielded

    def __len__(self) -> int:
        return self.dataset.steps_per_epoch

    @property
    def steps_per_epoch(self) -> int:
        """Exact steps per epoch, identical on every rank (``ceil(ceil(N / world) / batch)``)."""
        return self.dataset.steps_per_epoch

    def set_epoch(self, epoch: int) -> None:
        """Go to the start of ``epoch`` (kept where it is when already in ``epoch``)."""
        if epoch != self.epoch:
            self.epoch, self.step = epoch, 0

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        self.dataset.epoch, self.dataset.start_step = self.epoch, self.step
        if self.step < len(self):
            workers = self.dataset.num_workers
            batches: Iterable[Rows] = (
                DataLoader(self.dataset, batch_size=None, num_workers=workers, collate_fn=_as_numpy)
                if workers
                else self.dataset
            )
            for rows in batches:
                self.step += 1
                yield collate(rows)
        self.epoch, self.step = self.epoch + 1, 0

    def _identity(self) -> dict[str, Any]:
        d = self.dataset
        return {
            "world_size": d.world_size,
            "num_workers": max(d.num_workers, 1),
            "batch_size": d.batch_size,
            "seed": d.seed,
            "shuffle_buffer": d.shuffle_buffer,
            "language_alpha": d.language_alpha,
            "total": d.total,
            "tokenizer_sha256": d.manifest["tokenizer"]["sha256"],
        }

    def state_dict(self) -> dict[str, Any]:
        """Plain picklable position: the same on every rank (any rank's copy restores any rank)."""
        return {"epoch": self.epoch, "step": self.step, **self._identity()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state``: the next batch is the one after the batch it was saved at."""
        mine = self._identity()
        diff = {k: (state.get(k), v) for k, v in mine.items() if state.get(k) != v}
        if diff:
            detail = ", ".join(f"{k}: saved {a!r}, now {b!r}" for k, (a, b) in diff.items())
            raise ValueError(f"loader state does not fit this loader ({detail}); the order would differ")
        self.epoch, self.step = int(state["epoch"]), int(state["step"])


def build_dataloader(
    data_cfg: DataConfig, batch_size: int, rank: int, world_size: int, seed: int
) -> ShardLoader:
    """The engine's entry point: a :class:`ShardLoader` over ``data_cfg.shards`` for this rank."""
    return ShardLoader(
        ShardStream(
            data_cfg.shards,
            batch_size,
            rank=rank,
            world_size=world_size,
            num_workers=data_cfg.num_workers,
            seed=seed,
            shuffle_buffer=data_cfg.shuffle_buffer,
            language_alpha=data_cfg.language_alpha,
            skip_bad_shards=data_cfg.skip_bad_shards,
        )
    )
