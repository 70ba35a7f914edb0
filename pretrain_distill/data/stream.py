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

Resume: ``state_dict()`` is one JSON position ``(epoch, step, todo, layout)``. Loaded with the same
layout (world size, workers, batch size) it continues exactly; with another (elastic resume) the rest of
the epoch, ``todo``, is what the old layout had not read, split anew, so that epoch is shorter.
"""

from __future__ import annotations

import atexit
import logging
import signal
import weakref
from collections.abc import Callable, Iterable, Iterator
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from pretrain_distill.core.seeds import derive_seed, numpy_rng
from pretrain_distill.data import plan
from pretrain_distill.data.errors import DataError
from pretrain_distill.data.manifest import load_manifest
from pretrain_distill.data.shards import read_rows
from pretrain_distill.run_config import DataConfig

log = logging.getLogger(__name__)

Rows = tuple[np.ndarray, np.ndarray]  # (input_ids [n, T], lengths [n])


class ShardStream(IterableDataset):
    """A rank's batches from a position on, over all later epochs; split over DataLoader workers.

    The position is ``(epoch, todo, start_step)``: ``todo`` = the ranges of the epoch order this layout
    splits (``None``: the whole epoch; after an elastic resume: what the old layout had not read).
    """

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
        if not self.steps_per_epoch:
            raise DataError(f"{self.shard_dir}: the manifest lists no sequences")
        self.epoch = 0
        self.todo: plan.Ranges | None = None
        self.start_step = 0
        self.bad_shards: set[str] = set()

    @cached_property
    def language_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for language, n in self.shards:
            counts[language] = counts.get(language, 0) + n
        return counts

    def size(self, todo: plan.Ranges | None) -> int:
        """Sequences of an epoch reading ``todo`` (``None``: all)."""
        return self.total if todo is None else sum(hi - lo for lo, hi in todo)

    def epoch_steps(self, todo: plan.Ranges | None) -> int:
        """Steps of an epoch reading ``todo``; identical on every rank."""
        if todo is None:
            return self.steps_per_epoch
        try:
            return plan.steps_per_epoch(self.size(todo), self.world_size, self.batch_size)
        except DataError as err:
            raise DataError(f"resuming epoch {self.epoch} on this layout: {err}") from None

    def __iter__(self) -> Iterator[Rows | DataError]:
        info = get_worker_info()
        workers = max(self.num_workers, 1)
        if info is not None and info.num_workers != workers:
            raise RuntimeError(f"ShardStream built for {workers} workers runs in {info.num_workers}")
        try:
            yield from self._stream(info.id if info is not None else 0, workers)
        except DataError as err:
            if info is None:
                raise
            yield err  # the main process raises it: the same one line as without workers

    def _stream(self, physical: int, workers: int) -> Iterator[Rows]:
        """Worker ``physical``'s batches from the position on, epoch after epoch.

        The DataLoader asks workers 0, 1, ... in turn: the worker asked for the loader's ``g``-th
        batch is ``g % workers``, so each epoch it plays the role whose share holds those steps.
        """
        epoch, todo, start = self.epoch, self.todo, self.start_step
        before = 0  # batches of the stream before this epoch's first
        while True:
            steps = self.epoch_steps(todo)
            logical = (physical - before + start) % workers
            yield from self.worker_batches(epoch, logical, start, todo)
            before += steps - start
            epoch, todo, start = epoch + 1, None, 0

    def worker_batches(
        self, epoch: int, worker: int, start_step: int = 0, todo: plan.Ranges | None = None
    ) -> Iterator[Rows]:
        """Worker ``worker``'s batches of ``epoch`` for the steps ``>= start_step``, in step order."""
        total = self.size(todo)
        if not total:
            return
        share = plan.worker_share(
            total, self.rank, self.world_size, self.batch_size, worker, max(self.num_workers, 1)
        )
        first = int(np.searchsorted(share.steps, start_step))
        offset = int(share.sizes[:first].sum())  # sequences of this worker's earlier steps
        pieces = plan.epoch_pieces(self.shards, self.language_alpha, self.seed, epoch)
        if todo is not None:
            pieces = plan.select(pieces, todo)
        pieces = plan.slice_pieces(pieces, share.lo, share.hi)
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

    def window_order(self, epoch: int) -> Callable[[int, int], np.ndarray]:
        """``(position, size) -> order`` of the shuffle windows of ``epoch``."""
        return lambda position, size: plan.window_order(self.seed, epoch, position, size)

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
        order = plan.window_order(self.seed, epoch, position, len(ids))
        bad = lengths[order] == 0
        if bad.any():
            good = order[~bad]
            if not len(good):
                raise DataError(
                    f"{self.shard_dir}: a whole shuffle window at position {position} is unreadable"
                )
            rng = numpy_rng(self.seed, epoch, position, 1)
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


# A job's preemption SIGTERM (SLURM, kill of the process group) reaches the loader workers too; the
# training process handles it (finishes the step, saves, stops), and the step needs its workers alive.
WORKER_IGNORED_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


def _worker_init(_: int) -> None:
    """Loader workers leave preemption signals to the training process, which stops them itself."""
    for sig in WORKER_IGNORED_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def _close_at_exit(loader: weakref.ref) -> None:
    """Stop a loader's workers the orderly way before ``multiprocessing``'s exit hook would SIGTERM them
    (which they ignore): registered after that hook, so it runs first."""
    alive = loader()
    if alive is not None:
        alive.close()


class ShardLoader:
    """A rank's resumable loader: iterate for one epoch, ``state_dict()`` / ``load_state_dict()``.

    One worker pipeline serves the whole run (it runs on into the next epochs, so a new epoch starts
    without restarting workers); it is rebuilt only when the position jumps (``set_epoch`` to another
    epoch, ``load_state_dict``) or after an error. The DataLoader's base seed comes from its own
    generator, seeded from ``(seed, rank, position)``: it never draws from the global torch RNG, which
    belongs to the model (dropout), so the engine's saved RNG state is all that dropout depends on.
    """

    def __init__(self, dataset: ShardStream, prefetch_factor: int = 2) -> None:
        if prefetch_factor < 1:
            raise ValueError(f"prefetch_factor must be >= 1, got {prefetch_factor}")
        self.dataset = dataset
        self.prefetch_factor = prefetch_factor
        self.epoch = 0
        self.todo: plan.Ranges | None = None  # ranges of the epoch order this layout reads
        self.step = 0  # batches of ``epoch`` already yielded
        self._batches: Iterator[Rows | DataError] | None = None
        self._exit_hook = False

    def __len__(self) -> int:
        return self.dataset.steps_per_epoch

    @property
    def steps_per_epoch(self) -> int:
        """Exact steps per (whole) epoch, identical on every rank (``ceil(ceil(N / world) / batch)``)."""
        return self.dataset.steps_per_epoch

    def set_epoch(self, epoch: int) -> None:
        """Go to the start of ``epoch`` (kept where it is when already in ``epoch``)."""
        if epoch != self.epoch:
            self._go(epoch, None, 0)

    def _go(self, epoch: int, todo: plan.Ranges | None, step: int) -> None:
        self.epoch, self.todo, self.step = epoch, todo, step
        self.close()

    def close(self) -> None:
        """Stop the worker pipeline (the next iteration starts a new one at the position)."""
        self._batches = None  # the DataLoader iterator shuts its workers down when dropped

    def _open(self) -> Iterator[Rows | DataError]:
        d = self.dataset
        d.epoch, d.todo, d.start_step = self.epoch, self.todo, self.step
        if not d.num_workers:
            return iter(d)
        generator = torch.Generator().manual_seed(derive_seed(d.seed, d.rank, self.epoch, self.step))
        if not self._exit_hook:
            atexit.register(_close_at_exit, weakref.ref(self))
            self._exit_hook = True
        return iter(
            DataLoader(
                d,
                batch_size=None,
                num_workers=d.num_workers,
                collate_fn=_as_numpy,
                prefetch_factor=self.prefetch_factor,
                generator=generator,
                worker_init_fn=_worker_init,
            )
        )

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        while self.step < self.dataset.epoch_steps(self.todo):
            if self._batches is None:
                self._batches = self._open()
            try:
                rows = next(self._batches)
            except BaseException:
                self._batches = None
                raise
            if isinstance(rows, DataError):  # raised in a worker
                self._batches = None
                raise DataError(str(rows))
            self.step += 1
            yield collate(rows)
        self.epoch, self.todo, self.step = self.epoch + 1, None, 0

    def _identity(self) -> dict[str, Any]:
        """What fixes the epoch order: a saved position means the same sequences only if these match."""
        d = self.dataset
        return {
            "seed": d.seed,
            "shuffle_buffer": d.shuffle_buffer,
            "language_alpha": d.language_alpha,
            "total": d.total,
            "tokenizer_sha256": d.manifest["tokenizer"]["sha256"],
        }

    def _layout(self) -> dict[str, int]:
        """How the epoch is cut: world size x loader workers x batch size."""
        d = self.dataset
        return {"world_size": d.world_size, "num_workers": max(d.num_workers, 1), "batch_size": d.batch_size}

    def state_dict(self) -> dict[str, Any]:
        """The position as plain JSON data, the same on every rank (any rank's copy restores any rank)."""
        todo = None if self.todo is None else [list(r) for r in self.todo]
        return {"epoch": self.epoch, "step": self.step, "todo": todo, **self._layout(), **self._identity()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state``: the next batch is the one after the batch it was saved at.

        With the layout it was saved with, the batches are exactly those of the uninterrupted run.
        With another one (elastic resume) this layout splits the sequences of the epoch the old one
        had not read (:func:`plan.remaining`): each is read exactly once, in another grouping.
        """
        mine = self._identity()
        diff = {k: (state.get(k), v) for k, v in mine.items() if state.get(k) != v}
        if diff:
            detail = ", ".join(f"{k}: saved {a!r}, now {b!r}" for k, (a, b) in diff.items())
            raise ValueError(f"loader state does not fit this loader ({detail}); the order would differ")
        epoch, step = int(state["epoch"]), int(state["step"])
        todo = None if state.get("todo") is None else [(int(lo), int(hi)) for lo, hi in state["todo"]]
        saved = {k: int(state[k]) for k in self._layout()}
        if saved != self._layout():
            d = self.dataset
            left = plan.remaining(
                d.size(todo), *saved.values(), step, d.shuffle_buffer, d.window_order(epoch)
            )
            todo = left if todo is None else plan.compose(todo, left)
            log.info(
                "elastic resume: epoch %d was cut as %s, now %s: %d sequences of it are left",
                epoch, saved, self._layout(), d.size(todo),
            )  # fmt: skip
            step = 0
        self._go(epoch, todo, step)


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
        ),
        prefetch_factor=data_cfg.prefetch_factor,
    )
