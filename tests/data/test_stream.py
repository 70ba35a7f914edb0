"""The shard stream: exactly-once epochs over ranks x workers, exact resume, sampling, bad shards."""

from __future__ import annotations

import json
import logging
import re
from collections import Counter

import pytest
import torch

from pretrain_distill.data import plan
from pretrain_distill.data.errors import DataError
from pretrain_distill.data.stream import ShardLoader, ShardStream, build_dataloader, collate
from pretrain_distill.run_config import DataConfig

from .conftest import row_uid

COUNTS = [37, 5, 64, 1, 23, 50, 9]  # 189 sequences: divides evenly by nothing used below


def loader(shard_dir, batch=4, rank=0, world=1, workers=0, seed=0, buffer=16, alpha=1.0, skip=False):
    return ShardLoader(ShardStream(shard_dir, batch, rank, world, workers, seed, buffer, alpha, skip))


def uids(batches) -> list[int]:
    return [row_uid(row) for b in batches for row in b["input_ids"]]


def simulated_rank(shard_dir, batch, rank, world, workers):
    """A rank's batches in the DataLoader's round-robin order over its workers (no processes)."""
    stream = ShardStream(shard_dir, batch, rank, world, workers, 0, 16)
    per_worker = [stream.worker_batches(0, w) for w in range(max(workers, 1))]
    return [collate(next(per_worker[i % len(per_worker)])) for i in range(stream.steps_per_epoch)]


@pytest.mark.parametrize("world,workers,batch", [(1, 1, 8), (2, 3, 5), (3, 2, 4), (4, 4, 6), (5, 3, 7)])
def test_epoch_covers_every_sequence_once(make_shards, world, workers, batch):
    shard_dir = make_shards(COUNTS)
    seen = Counter()
    steps = set()
    for rank in range(world):
        batches = simulated_rank(shard_dir, batch, rank, world, workers)
        steps.add(len(batches))
        seen.update(uids(batches))
    assert seen == Counter(range(sum(COUNTS)))
    assert steps == {plan.steps_per_epoch(sum(COUNTS), world, batch)}


def test_dataloader_workers_deliver_the_planned_order(make_shards):
    shard_dir = make_shards(COUNTS)
    seen = Counter()
    for rank in range(2):
        real = list(loader(shard_dir, batch=5, rank=rank, world=2, workers=3))
        expected = simulated_rank(shard_dir, 5, rank, 2, 3)
        assert len(real) == len(expected) == len(loader(shard_dir, batch=5, rank=rank, world=2, workers=3))
        assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(real, expected))
        seen.update(uids(real))
    assert seen == Counter(range(sum(COUNTS)))


def test_batch_tensors(make_shards):
    batch = next(iter(loader(make_shards(COUNTS), batch=6)))
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert ids.dtype == mask.dtype == torch.long and ids.shape == mask.shape == (6, 8)
    lengths = mask.sum(1)
    assert (ids[torch.arange(6), lengths - 1] == 102).all() and (ids[:, 0] == 101).all()
    assert ((ids == 0) == (mask == 0)).all()  # padding exactly where the mask is 0


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_yields_exactly_the_remaining_batches(make_shards, workers):
    shard_dir = make_shards(COUNTS)
    full = list(loader(shard_dir, batch=4, world=2, rank=1, workers=workers))
    for stop in (1, 7, len(full) - 1):
        first = loader(shard_dir, batch=4, world=2, rank=1, workers=workers)
        it = iter(first)
        head = [next(it) for _ in range(stop)]
        state = first.state_dict()
        resumed = loader(shard_dir, batch=4, world=2, rank=1, workers=workers)
        resumed.load_state_dict(state)
        tail = list(resumed)
        assert len(head) + len(tail) == len(full)
        assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(head + tail, full))


def test_epochs_advance_and_reshuffle(make_shards):
    shard_dir = make_shards(COUNTS)
    run = loader(shard_dir, batch=4, buffer=32)
    epoch0, epoch1 = uids(run), uids(run)  # exhausting epoch 0 moves on to epoch 1
    assert run.state_dict()["epoch"] == 2 and run.state_dict()["step"] == 0
    assert sorted(epoch0) == sorted(epoch1) == list(range(189)) and epoch0 != epoch1
    run.set_epoch(1)
    assert uids(run) == epoch1  # set_epoch jumps to an epoch's start, the order is a function of it
    # A state saved at an epoch's end resumes at the next epoch's first batch.
    again = loader(shard_dir, batch=4, buffer=32)
    again.load_state_dict({**run.state_dict(), "epoch": 0, "step": len(run)})
    assert uids(again) == [] and uids(again) == epoch1


def test_shuffle_is_seeded(make_shards):
    shard_dir = make_shards(COUNTS)
    a, b, c = (uids(loader(shard_dir, seed=s, buffer=32)) for s in (1, 1, 2))
    assert a == b and a != c and sorted(a) == sorted(c)
    assert a != sorted(a)  # the buffer mixes within a shard range too


def test_state_from_another_order_is_refused(make_shards):
    shard_dir = make_shards(COUNTS)
    state = loader(shard_dir, batch=4, workers=2, buffer=16).state_dict()
    assert json.loads(json.dumps(state)) == state  # plain JSON data
    with pytest.raises(ValueError, match="shuffle_buffer: saved 16, now 8"):
        loader(shard_dir, batch=4, workers=2, buffer=8).load_state_dict(state)
    with pytest.raises(ValueError, match="seed"):
        loader(shard_dir, batch=4, workers=2, seed=3).load_state_dict(state)


def take(run: ShardLoader, count: int) -> list[dict[str, torch.Tensor]]:
    """The next ``count`` batches of ``run`` (the loader keeps its position)."""
    out = []
    for batch in run:
        out.append(batch)
        if len(out) == count:
            break
    return out


# (world, workers, batch) before -> after; (old steps taken, or None = all but the last)
ELASTIC = [
    ((2, 1, 4), (1, 1, 4), 7),  # 2 ranks -> 1
    ((1, 1, 4), (2, 1, 4), 11),  # 1 rank -> 2
    ((2, 2, 4), (3, 3, 5), 5),  # other workers and batch size too
    ((3, 2, 6), (2, 1, 4), 1),
    ((2, 3, 5), (1, 2, 5), None),
]


@pytest.mark.parametrize("before,after,stop", ELASTIC)
def test_elastic_resume_reads_the_rest_of_the_epoch_exactly_once(make_shards, before, after, stop):
    shard_dir = make_shards(COUNTS)
    (w0, k0, b0), (w1, k1, b1) = before, after
    old = [loader(shard_dir, batch=b0, rank=r, world=w0, workers=k0, buffer=16) for r in range(w0)]
    stop = len(old[0]) - 1 if stop is None else stop
    seen = Counter(uids(b for run in old for b in take(run, stop)))
    state = old[0].state_dict()
    assert all(run.state_dict() == state for run in old)  # one position for all ranks
    new = [loader(shard_dir, batch=b1, rank=r, world=w1, workers=k1, buffer=16) for r in range(w1)]
    for run in new:
        run.load_state_dict(json.loads(json.dumps(state)))
    rest = [list(run) for run in new]
    assert len({len(batches) for batches in rest}) == 1  # every rank runs the same number of steps
    seen.update(uids(b for batches in rest for b in batches))
    assert seen == Counter(range(sum(COUNTS)))  # none lost, none repeated
    # the next epoch is a whole one, split the new way
    assert sorted(uids(b for run in new for b in run)) == list(range(sum(COUNTS)))
    assert {run.state_dict()["epoch"] for run in new} == {2}


def test_elastic_resume_twice_in_one_epoch_with_real_workers(make_shards):
    shard_dir = make_shards(COUNTS)
    first = [loader(shard_dir, batch=4, rank=r, world=2, workers=2) for r in range(2)]
    seen = Counter(uids(b for run in first for b in take(run, 6)))
    second = loader(shard_dir, batch=3, workers=3)  # 2 ranks -> 1, 2 workers -> 3
    second.load_state_dict(first[1].state_dict())
    seen.update(uids(take(second, 9)))
    third = [loader(shard_dir, batch=5, rank=r, world=2, workers=2) for r in range(2)]
    for run in third:
        run.load_state_dict(second.state_dict())
    seen.update(uids(b for run in third for b in run))
    assert seen == Counter(range(sum(COUNTS)))


def test_elastic_resume_at_an_epoch_end_starts_the_next_epoch(make_shards):
    shard_dir = make_shards(COUNTS)
    old = loader(shard_dir, batch=4, world=2)
    list(take(old, len(old)))  # the last batch taken, the pass not yet closed
    assert old.state_dict()["step"] == len(old)
    new = loader(shard_dir, batch=4, world=1)
    new.load_state_dict(old.state_dict())
    assert uids(new) == []
    assert sorted(uids(new)) == list(range(sum(COUNTS)))


@pytest.mark.parametrize("workers,prefetch", [(2, 1), (3, 4)])
def test_workers_resume_exactly_across_epochs(make_shards, workers, prefetch):
    """One pipeline runs on over epoch ends; a restart anywhere gives the same batches."""
    shard_dir = make_shards(COUNTS)

    def make():
        return ShardLoader(ShardStream(shard_dir, 4, 0, 1, workers, 0, 16), prefetch_factor=prefetch)

    run = make()
    full = [uids(run), uids(run)]  # two epochs
    for stop in (1, len(run) - 1, len(run) + 3):
        head = make()
        taken = uids(take(head, min(stop, len(run))))
        if stop > len(run):
            list(head)  # close epoch 0
            taken += uids(take(head, stop - len(run)))
        resumed = make()
        resumed.load_state_dict(head.state_dict())
        rest = uids(resumed) if stop < len(run) else []
        rest += uids(resumed)
        assert taken + rest == full[0] + full[1][: len(taken) + len(rest) - len(full[0])]


@pytest.mark.parametrize("damage", ["garbage", "empty", "missing"])
def test_worker_errors_read_as_the_same_one_line(make_shards, damage):
    shard_dir = make_shards(COUNTS, block_size=4)
    bad = shard_dir / "en-000002.tar"
    if damage == "missing":
        bad.unlink()
    else:
        bad.write_bytes({"garbage": b"\x00garbage" * 300, "empty": b""}[damage])
    messages = []
    for workers in (0, 2):
        with pytest.raises(DataError) as caught:
            list(loader(shard_dir, workers=workers))
        messages.append(re.sub(r"(block|row) \d+", r"\1 N", str(caught.value)))  # workers start elsewhere
    assert messages[0] == messages[1] and "\n" not in messages[1]
    assert messages[1].startswith(f"shard {bad}: ") and "Traceback" not in messages[1]


def test_language_sampling_proportions(make_shards):
    counts, langs = [300, 200, 100, 12, 6], ["en", "en", "de", "ga", "ga"]
    shard_dir = make_shards(counts, langs)
    language_of = {}
    uid = 0
    for n, lang in zip(counts, langs):
        language_of.update({u: lang for u in range(uid, uid + n)})
        uid += n
    n_l = {"en": 500, "de": 100, "ga": 18}
    for alpha in (1.0, 0.3):
        got = Counter(language_of[u] for u in uids(loader(shard_dir, batch=8, alpha=alpha, world=1)))
        weights = {k: v**alpha for k, v in n_l.items()}
        for lang in n_l:
            expected = 618 * weights[lang] / sum(weights.values())
            assert abs(got[lang] - expected) <= 1, (alpha, lang, got)
    again = uids(loader(shard_dir, batch=8, alpha=0.3))
    assert again == uids(loader(shard_dir, batch=8, alpha=0.3))  # deterministic given the seed


@pytest.mark.parametrize("damage", ["truncate", "empty", "garbage"])
def test_bad_shard_raises_naming_it(make_shards, damage):
    shard_dir = make_shards(COUNTS, block_size=4)
    bad = shard_dir / "en-000002.tar"
    data = bad.read_bytes()
    bad.write_bytes(
        {"truncate": data[: len(data) // 2], "empty": b"", "garbage": b"\x00garbage" * 300}[damage]
    )
    with pytest.raises(DataError, match="en-000002.tar"):
        list(loader(shard_dir))


def test_skip_bad_shards_warns_counts_and_keeps_the_step_count(make_shards, caplog):
    shard_dir = make_shards(COUNTS)
    (shard_dir / "en-000002.tar").write_bytes(b"")
    run = loader(shard_dir, batch=4, buffer=64, skip=True)
    with caplog.at_level(logging.WARNING):
        got = uids(run)
    assert len(got) == 189 and run.state_dict()["epoch"] == 1
    bad_uids = set(range(42, 106))  # shard 2 holds uids 42..105
    assert not bad_uids & set(got)
    assert run.dataset.bad_shards == {"en-000002.tar"}
    assert "en-000002.tar" in caplog.text and "1 bad shards skipped" in caplog.text


def test_build_dataloader_from_config(make_shards):
    shard_dir = make_shards(COUNTS)
    cfg = DataConfig(shards=str(shard_dir), num_workers=0, shuffle_buffer=8)
    run = build_dataloader(cfg, batch_size=16, rank=1, world_size=2, seed=5)
    assert len(run) == run.steps_per_epoch == 6  # 94 sequences on rank 1 -> 6 steps
    assert len(list(run)) == 6


def test_missing_manifest_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="no manifest"):
        ShardStream(tmp_path, 4)


def test_breaking_out_and_iterating_again_continues(make_shards):
    shard_dir = make_shards(COUNTS)
    full = uids(loader(shard_dir, batch=4, workers=2))
    run = loader(shard_dir, batch=4, workers=2)
    head = []
    for batch in run:
        head.append(batch)
        if len(head) == 5:
            break
    assert run.state_dict()["step"] == 5
    assert uids(head) + uids(run) == full


def test_shipped_data_configs():
    from pretrain_distill.run_config import load_run_config

    xlmr = load_run_config(["data/cc100_xlmr_sampling"]).data
    assert xlmr.language_alpha == 0.3 and xlmr.shards == "runs/shards/cc100"
    assert load_run_config(["data/wiki_minilm"]).data.shards == "runs/shards/wiki"
