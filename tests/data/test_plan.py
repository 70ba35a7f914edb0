"""The epoch plan: exact splits over ranks x workers, equal step counts, language sampling."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from pretrain_distill.data import plan
from pretrain_distill.data.errors import DataError

SHARDS = [("en", 37), ("en", 5), ("de", 64), ("en", 1), ("de", 23), ("fr", 50), ("en", 9)]


@pytest.mark.parametrize(
    "world_size,workers,batch", [(1, 1, 4), (1, 3, 7), (2, 2, 5), (3, 2, 4), (4, 3, 6), (5, 4, 3), (7, 2, 1)]
)
def test_every_sequence_once_across_ranks_and_workers(world_size, workers, batch):
    pieces = plan.epoch_pieces(SHARDS, 1.0, seed=3, epoch=0)
    total = sum(n for _, n in SHARDS)
    seen = Counter()
    steps_per_rank = []
    for rank in range(world_size):
        sizes = plan.batch_sizes(total, rank, world_size, batch)
        steps_per_rank.append(len(sizes))
        assert sizes.min() >= 1 and sizes.max() <= batch
        for worker in range(workers):
            share = plan.worker_share(total, rank, world_size, batch, worker, workers)
            assert share.hi - share.lo == share.sizes.sum()
            assert (share.sizes == sizes[worker::workers]).all()
            for p in plan.slice_pieces(pieces, share.lo, share.hi):
                seen.update((p.shard, row) for row in range(p.start, p.stop))
    expected = {(k, row) for k, (_, n) in enumerate(SHARDS) for row in range(n)}
    assert set(seen) == expected and set(seen.values()) == {1}
    assert set(steps_per_rank) == {plan.steps_per_epoch(total, world_size, batch)}


def test_batches_are_full_except_at_the_end():
    # 193 sequences on 2 ranks of batch 32: 97 + 96 -> 4 steps each, every sequence used.
    assert plan.batch_sizes(193, 0, 2, 32).tolist() == [32, 32, 32, 1]
    assert plan.batch_sizes(193, 1, 2, 32).tolist() == [32, 32, 31, 1]
    assert plan.batch_sizes(128, 1, 2, 32).tolist() == [32, 32]


def test_too_few_sequences_raises():
    with pytest.raises(DataError, match="cannot give every one of 4 ranks"):
        plan.steps_per_epoch(3, 4, 8)
    with pytest.raises(DataError, match="batch size"):
        plan.steps_per_epoch(5, 2, 1)


def test_language_targets_follow_n_to_the_alpha():
    counts = {"en": 10_000, "de": 1_000, "ga": 10}
    assert plan.language_targets(counts, 1.0) == counts
    uniform = plan.language_targets(counts, 0.0)
    assert sum(uniform.values()) == 11_010 and max(uniform.values()) - min(uniform.values()) <= 1
    xlmr = plan.language_targets(counts, 0.3)
    weights = {k: v**0.3 for k, v in counts.items()}
    for lang, m in xlmr.items():
        assert abs(m - 11_010 * weights[lang] / sum(weights.values())) < 1
    assert sum(xlmr.values()) == 11_010


def test_alpha_pieces_upsample_and_cycle_through_downsampled_languages():
    shards = [("en", 40), ("en", 60), ("ga", 3)]
    targets = plan.language_targets({"en": 100, "ga": 3}, 0.3)
    seen_en = set()
    for epoch in range(4):
        pieces = plan.epoch_pieces(shards, 0.3, seed=0, epoch=epoch)
        per_lang = Counter()
        for p in pieces:
            per_lang[shards[p.shard][0]] += p.stop - p.start
            if shards[p.shard][0] == "en":
                seen_en.update((p.shard, r) for r in range(p.start, p.stop))
        assert per_lang == Counter(targets)  # ga repeated ~9x, en downsampled
    # en's window moves on every epoch: after ceil(100 / m_en) epochs every en sequence was read.
    assert -(-100 // targets["en"]) <= 4 and len(seen_en) == 100


def test_epoch_order_is_seeded():
    a = plan.epoch_pieces(SHARDS, 1.0, seed=1, epoch=0)
    assert a == plan.epoch_pieces(SHARDS, 1.0, seed=1, epoch=0)
    assert a != plan.epoch_pieces(SHARDS, 1.0, seed=2, epoch=0)
    assert a != plan.epoch_pieces(SHARDS, 1.0, seed=1, epoch=1)
    assert sorted(a) == sorted(plan.epoch_pieces(SHARDS, 1.0, seed=1, epoch=1))


def test_slice_pieces_cuts_inside_pieces():
    pieces = [plan.Piece(0, 0, 10), plan.Piece(1, 5, 8), plan.Piece(2, 0, 4)]
    assert plan.slice_pieces(pieces, 8, 14) == [
        plan.Piece(0, 8, 10),
        plan.Piece(1, 5, 8),
        plan.Piece(2, 0, 1),
    ]
    assert np.sum([p.stop - p.start for p in plan.slice_pieces(pieces, 0, 17)]) == 17
