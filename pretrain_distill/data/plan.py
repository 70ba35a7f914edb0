"""The epoch plan: which sequences each rank and loader worker reads, in which order, in what batches.

Everything here is a pure function of the manifest's shard counts and ``(seed, epoch, rank,
world_size, num_workers, batch_size)``, so every process computes the same plan with no communication
and a restart can jump to any step by arithmetic.

1. Language sampling: language ``l`` with ``n_l`` sequences gets ``m_l`` sequences per epoch with
   ``m_l ∝ n_l^alpha`` (largest-remainder rounding, ``sum m_l = N``). Each language's shards form a
   fixed seeded cyclic order; epoch ``e`` reads the window ``[e*m_l, (e+1)*m_l)`` of it (modulo
   ``n_l``): downsampled languages advance through their data epoch by epoch, upsampled ones repeat.
   With ``alpha = 1`` every shard is read exactly once per epoch.
2. The resulting pieces (shard row ranges) are shuffled per epoch and concatenated into one order.
3. That order is cut into ``world_size`` contiguous rank ranges (sizes differ by at most 1). Each rank
   runs the same number of steps ``S = ceil(ceil(N / world_size) / batch_size)``: batches are full
   except the last one(s) of a rank with fewer sequences, so every sequence is used exactly once.
4. Step ``i`` of a rank is produced by loader worker ``i % num_workers``; a worker's share is the
   contiguous sub-range holding the sequences of its steps, read in shuffle windows
   (:func:`window_order`).

Elastic resume: :func:`remaining` gives, for a position ``(step, layout)``, the positions of the epoch
order nobody has read yet; a new layout (other world size / workers / batch size) splits just those
(``select`` + the same steps 3-4 over their count), so each is read exactly once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np

from pretrain_distill.core.seeds import numpy_rng
from pretrain_distill.data.errors import DataError

Ranges = list[tuple[int, int]]  # [lo, hi) position ranges, in reading order


class Piece(NamedTuple):
    """Rows ``[start, stop)`` of shard number ``shard`` (an index into the manifest's shard list)."""

    shard: int
    start: int
    stop: int


def language_targets(counts: dict[str, int], alpha: float) -> dict[str, int]:
    """Sequences per language per epoch: ``p_l ∝ n_l^alpha``, rounded to sum to ``sum(n_l)``."""
    langs = sorted(counts)
    n = np.array([counts[lang] for lang in langs], dtype=np.float64)
    total = int(n.sum())
    weights = n**alpha
    exact = total * weights / weights.sum()
    target = np.floor(exact).astype(np.int64)
    for i in np.argsort(-(exact - target), kind="stable")[: total - int(target.sum())]:
        target[i] += 1
    return dict(zip(langs, target.tolist()))


def epoch_pieces(shards: Sequence[tuple[str, int]], alpha: float, seed: int, epoch: int) -> list[Piece]:
    """The epoch's read order over ``shards`` = ``[(language, sequences), ...]`` (see module doc)."""
    by_language: dict[str, list[int]] = {}
    for index, (language, _) in enumerate(shards):
        by_language.setdefault(language, []).append(index)
    targets = language_targets(
        {lang: sum(shards[i][1] for i in ids) for lang, ids in by_language.items()}, alpha
    )
    pieces: list[Piece] = []
    for lang_index, (language, ids) in enumerate(sorted(by_language.items())):
        order = [ids[i] for i in numpy_rng(seed, lang_index).permutation(len(ids))]
        pieces += _cyclic_window(
            order, [shards[i][1] for i in order], epoch * targets[language], targets[language]
        )
    shuffle = numpy_rng(seed, epoch, 1 << 20).permutation(len(pieces))
    return [pieces[i] for i in shuffle]


def _cyclic_window(order: list[int], sizes: list[int], start: int, length: int) -> list[Piece]:
    """Pieces covering positions ``[start, start + length)`` of the cyclic concatenation of shards."""
    total = sum(sizes)
    ends = np.cumsum(sizes)
    pos = start % total
    k = int(np.searchsorted(ends, pos, side="right"))
    pieces = []
    offset = pos - (int(ends[k]) - sizes[k])
    while length > 0:
        take = min(sizes[k] - offset, length)
        pieces.append(Piece(order[k], offset, offset + take))
        length -= take
        k, offset = (k + 1) % len(order), 0
    return pieces


def slice_pieces(pieces: Sequence[Piece], lo: int, hi: int) -> list[Piece]:
    """The pieces covering positions ``[lo, hi)`` of the concatenation of ``pieces``."""
    out = []
    pos = 0
    for piece in pieces:
        size = piece.stop - piece.start
        a, b = max(lo - pos, 0), min(hi - pos, size)
        if a < b:
            out.append(Piece(piece.shard, piece.start + a, piece.start + b))
        pos += size
        if pos >= hi:
            break
    return out


def rank_range(total: int, rank: int, world_size: int) -> tuple[int, int]:
    """Rank ``rank``'s contiguous share ``[lo, hi)`` of ``total`` positions (sizes differ by <= 1)."""
    base, extra = divmod(total, world_size)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (rank < extra)


def steps_per_epoch(total: int, world_size: int, batch_size: int) -> int:
    """Steps every rank runs per epoch; raises when some rank cannot fill that many batches."""
    steps = _ceil_div(_ceil_div(total, world_size), batch_size)
    if total // world_size < steps:
        raise DataError(
            f"{total} sequences cannot give every one of {world_size} ranks {steps} non-empty batches "
            f"of <= {batch_size}: prepare more data or lower the batch size / world size"
        )
    return steps


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def batch_sizes(total: int, rank: int, world_size: int, batch_size: int) -> np.ndarray:
    """The rank's batch size at every step: full batches, then smaller ones to use every sequence."""
    steps = steps_per_epoch(total, world_size, batch_size)
    lo, hi = rank_range(total, rank, world_size)
    sizes = np.full(steps, batch_size, dtype=np.int64)
    deficit = steps * batch_size - (hi - lo)
    if deficit:
        ones, rest = divmod(deficit, batch_size - 1)
        sizes[steps - ones :] = 1
        if rest:
            sizes[steps - ones - 1] -= rest
    return sizes


class WorkerShare(NamedTuple):
    """A loader worker's part of a rank's epoch: its steps, their batch sizes, its position range."""

    steps: np.ndarray  # the rank's step numbers this worker produces, ascending
    sizes: np.ndarray  # their batch sizes
    lo: int  # its sequences are positions [lo, hi) of the epoch order
    hi: int


def worker_share(
    total: int, rank: int, world_size: int, batch_size: int, worker: int, num_workers: int
) -> WorkerShare:
    """Worker ``worker`` of ``num_workers`` on ``rank``: steps ``worker, worker + num_workers, ...``."""
    sizes = batch_sizes(total, rank, world_size, batch_size)
    lo, _ = rank_range(total, rank, world_size)
    lo += int(sum(sizes[w::num_workers].sum() for w in range(worker)))
    mine = sizes[worker::num_workers]
    return WorkerShare(np.arange(worker, len(sizes), num_workers), mine, lo, lo + int(mine.sum()))


def window_order(seed: int, epoch: int, position: int, size: int) -> np.ndarray:
    """The seeded reading order of the shuffle window of ``size`` rows starting at ``position``."""
    return numpy_rng(seed, epoch, position).permutation(size)


def select(pieces: Sequence[Piece], ranges: Ranges) -> list[Piece]:
    """The pieces covering ``ranges`` (in their order) of the concatenation of ``pieces``."""
    ends = np.cumsum([p.stop - p.start for p in pieces])
    out = []
    for lo, hi in ranges:
        first = int(np.searchsorted(ends, lo, side="right"))
        base = int(ends[first - 1]) if first else 0
        out += slice_pieces(pieces[first:], lo - base, hi - base)
    return out


def compose(outer: Ranges, inner: Ranges) -> Ranges:
    """Positions ``inner`` of the concatenation of the ranges ``outer``, as ranges of the base order."""
    starts = np.cumsum([0] + [hi - lo for lo, hi in outer])
    out: Ranges = []
    for lo, hi in inner:
        k = int(np.searchsorted(starts, lo, side="right")) - 1
        while lo < hi:
            take = min(hi, int(starts[k + 1])) - lo
            base = outer[k][0] + lo - int(starts[k])
            out.append((base, base + take))
            lo += take
            k += 1
    return _merge(out)


def remaining(
    total: int,
    world_size: int,
    num_workers: int,
    batch_size: int,
    step: int,
    window: int,
    order: Callable[[int, int], np.ndarray],
) -> Ranges:
    """Positions of ``[0, total)`` not yet read once every rank has taken ``step`` batches.

    A worker reads its share in windows of ``window`` positions, each in the order
    ``order(position, size)`` (:func:`window_order`): whole windows are read, then part of one.
    """
    out: Ranges = []
    for rank in range(world_size):
        for worker in range(num_workers):
            share = worker_share(total, rank, world_size, batch_size, worker, num_workers)
            full, partial = divmod(int(share.sizes[share.steps < step].sum()), window)
            cut = share.lo + full * window
            if partial:
                size = min(window, share.hi - cut)
                out += _runs(np.sort(order(cut, size)[partial:]) + cut)
                cut += size
            if cut < share.hi:
                out.append((cut, share.hi))
    return _merge(sorted(out))


def _runs(positions: np.ndarray) -> Ranges:
    """Ascending positions as ranges of consecutive ones."""
    if not len(positions):
        return []
    breaks = np.flatnonzero(np.diff(positions) != 1) + 1
    return [(int(run[0]), int(run[-1]) + 1) for run in np.split(positions, breaks)]


def _merge(ranges: Ranges) -> Ranges:
    """Join ranges that touch (``[a, b), [b, c)`` -> ``[a, c)``), keeping their order."""
    out: Ranges = []
    for lo, hi in ranges:
        if out and out[-1][1] == lo:
            out[-1] = (out[-1][0], hi)
        elif lo < hi:
            out.append((lo, hi))
    return out
