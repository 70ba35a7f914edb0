"""Layer mappings: the tables written out by hand from docs/papers.md's definitions, the RAIL-KD random draw,
explicit lists and the errors."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from pretrain_distill.objectives import (
    STRATEGIES,
    layer_mapping,
    mapping_pairs,
    reachable_mapping,
    validate_mapping,
)

# Written by hand from docs/papers.md (k = ceil(L_T / L_S); indices above L_T clamped to L_T, duplicates dropped):
#   single: phi(L_S) = {L_T};  last: {L_T - L_S + i};  uniform: {k i};
#   uniform_cons: {k(i-1)+1 .. k i};  uniform_last: {k i} | {L_T - L_S + i}.
TABLES: dict[tuple[int, int], dict[str, list[tuple[int, ...]]]] = {
    (12, 6): {  # k = 2
        "single": [(), (), (), (), (), (12,)],
        "last": [(7,), (8,), (9,), (10,), (11,), (12,)],
        "uniform": [(2,), (4,), (6,), (8,), (10,), (12,)],
        "uniform_cons": [(1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12)],
        "uniform_last": [(2, 7), (4, 8), (6, 9), (8, 10), (10, 11), (12,)],
    },
    (12, 4): {  # k = 3
        "single": [(), (), (), (12,)],
        "last": [(9,), (10,), (11,), (12,)],
        "uniform": [(3,), (6,), (9,), (12,)],
        "uniform_cons": [(1, 2, 3), (4, 5, 6), (7, 8, 9), (10, 11, 12)],
        "uniform_last": [(3, 9), (6, 10), (9, 11), (12,)],
    },
    (12, 3): {  # k = 4
        "single": [(), (), (12,)],
        "last": [(10,), (11,), (12,)],
        "uniform": [(4,), (8,), (12,)],
        "uniform_cons": [(1, 2, 3, 4), (5, 6, 7, 8), (9, 10, 11, 12)],
        "uniform_last": [(4, 10), (8, 11), (12,)],
    },
    (24, 6): {  # k = 4
        "single": [(), (), (), (), (), (24,)],
        "last": [(19,), (20,), (21,), (22,), (23,), (24,)],
        "uniform": [(4,), (8,), (12,), (16,), (20,), (24,)],
        "uniform_cons": [
            (1, 2, 3, 4),
            (5, 6, 7, 8),
            (9, 10, 11, 12),
            (13, 14, 15, 16),
            (17, 18, 19, 20),
            (21, 22, 23, 24),
        ],
        "uniform_last": [(4, 19), (8, 20), (12, 21), (16, 22), (20, 23), (24,)],
    },
    (6, 3): {  # k = 2
        "single": [(), (), (6,)],
        "last": [(4,), (5,), (6,)],
        "uniform": [(2,), (4,), (6,)],
        "uniform_cons": [(1, 2), (3, 4), (5, 6)],
        "uniform_last": [(2, 4), (4, 5), (6,)],
    },
    (12, 5): {  # k = ceil(12/5) = 3: 15 clamps to 12
        "single": [(), (), (), (), (12,)],
        "last": [(8,), (9,), (10,), (11,), (12,)],
        "uniform": [(3,), (6,), (9,), (12,), (12,)],
        "uniform_cons": [(1, 2, 3), (4, 5, 6), (7, 8, 9), (10, 11, 12), (12,)],
        "uniform_last": [(3, 8), (6, 9), (9, 10), (11, 12), (12,)],
    },
}

CASES = [(lt, ls, name) for (lt, ls), table in TABLES.items() for name in table]


@pytest.mark.parametrize("lt,ls,name", CASES, ids=[f"{lt}->{ls}-{n}" for lt, ls, n in CASES])
def test_tables_by_hand(lt: int, ls: int, name: str) -> None:
    got = layer_mapping(name, lt, ls)
    assert got == TABLES[(lt, ls)][name]
    assert isinstance(got, list) and all(isinstance(e, tuple) for e in got)


def test_every_fixed_strategy_is_tabulated() -> None:
    assert set(TABLES[(12, 6)]) == set(STRATEGIES) - {"random"}


@pytest.mark.parametrize("lt,ls", [(12, 6), (12, 4), (12, 3), (24, 6), (6, 3)])
def test_uniform_cons_maps_every_teacher_layer_exactly_once_when_divisible(lt: int, ls: int) -> None:
    counts = Counter(j for _, j in mapping_pairs(layer_mapping("uniform_cons", lt, ls)))
    assert counts == Counter(range(1, lt + 1))


def test_same_depth_is_identity() -> None:
    ident = [(i,) for i in range(1, 7)]
    for name in ("last", "uniform", "uniform_cons", "uniform_last"):
        assert layer_mapping(name, 6, 6) == ident
    assert layer_mapping("random", 6, 6, generator=torch.Generator().manual_seed(3)) == ident


def test_aliases() -> None:
    assert layer_mapping("Uniform+Last", 12, 6) == TABLES[(12, 6)]["uniform_last"]
    assert layer_mapping("uniform-cons", 12, 4) == TABLES[(12, 4)]["uniform_cons"]


# ----------------------------------------------------------------------------------------- random


def _draw(seed: int, lt: int = 12, ls: int = 6, **kw):
    return layer_mapping("random", lt, ls, generator=torch.Generator().manual_seed(seed), **kw)


@pytest.mark.parametrize("lt,ls", [(12, 6), (12, 4), (12, 3), (24, 6), (6, 3), (12, 12), (12, 1)])
def test_random_sorted_distinct_in_range(lt: int, ls: int) -> None:
    for seed in range(50):
        m = _draw(seed, lt, ls)
        assert len(m) == ls and all(len(e) == 1 for e in m)
        flat = [e[0] for e in m]
        assert flat == sorted(flat)
        assert len(set(flat)) == ls
        assert all(1 <= j <= lt for j in flat)


def test_random_seeded_reproducible_and_varies() -> None:
    assert _draw(7) == _draw(7)
    assert len({tuple(_draw(s)) for s in range(20)}) > 5
    # a generator advances: consecutive draws from one generator differ (with overwhelming probability)
    g = torch.Generator().manual_seed(0)
    draws = {tuple(layer_mapping("random", 12, 6, generator=g)) for _ in range(10)}
    assert len(draws) > 1


def test_random_covers_all_layers_roughly_uniformly() -> None:
    counts = Counter(e[0] for s in range(600) for e in _draw(s))
    assert set(counts) == set(range(1, 13))
    # each layer is picked with probability 6/12: expect 300 of 600, allow a wide band
    assert all(200 < c < 400 for c in counts.values()), counts
    # every subset of size 6 is equally likely: the first student layer is layer 1 with P = C(11,5)/C(12,6)
    first = Counter(_draw(s)[0][0] for s in range(600))
    assert 200 < first[1] < 400


def test_random_candidates_rail_kd_intermediate_layers() -> None:
    # RAIL-KD, 12 -> 6: 5 student intermediate layers drawn from teacher layers 1..11
    for seed in range(100):
        m = _draw(seed, 12, 5, candidates=range(1, 12))
        flat = [e[0] for e in m]
        assert 12 not in flat and flat == sorted(flat) and len(set(flat)) == 5
    counts = Counter(e[0] for s in range(300) for e in _draw(s, 12, 5, candidates=range(1, 12)))
    assert set(counts) == set(range(1, 12))


def test_random_draws_are_within_reachable_mapping() -> None:
    reach = reachable_mapping("random", 12, 6)
    assert reach[0] == (1, 2, 3, 4, 5, 6, 7)
    assert reach[5] == (6, 7, 8, 9, 10, 11, 12)
    for s in range(300):
        for i, (j,) in enumerate(_draw(s)):
            assert j in reach[i]
    # 6 -> 3: every reachable pair occurs (the rarest, {4,5,6} or {1,2,3}, has probability 1/20)
    reach_small = reachable_mapping("random", 6, 3)
    assert reach_small == [(1, 2, 3, 4), (2, 3, 4, 5), (3, 4, 5, 6)]
    seen: list[set[int]] = [set() for _ in range(3)]
    for s in range(400):
        for i, (j,) in enumerate(_draw(s, 6, 3)):
            assert j in reach_small[i]
            seen[i].add(j)
    assert [tuple(sorted(x)) for x in seen] == reach_small
    reach_c = reachable_mapping("random", 12, 5, candidates=range(1, 12))
    assert reach_c == [tuple(range(i, i + 7)) for i in range(1, 6)]
    assert reachable_mapping("uniform_last", 12, 6) == TABLES[(12, 6)]["uniform_last"]


def test_random_errors() -> None:
    with pytest.raises(ValueError, match="num_student_layers <="):
        layer_mapping("random", 4, 6)
    with pytest.raises(ValueError, match="num_student_layers <="):
        layer_mapping("random", 12, 12, candidates=range(1, 12))
    with pytest.raises(ValueError, match="out of range"):
        layer_mapping("random", 12, 3, candidates=[0, 1, 2, 3])
    with pytest.raises(ValueError, match="only applies"):
        layer_mapping("uniform", 12, 3, candidates=[1, 2, 3])


# ---------------------------------------------------------------------------------------- explicit


def test_explicit_list_is_validated_and_normalised() -> None:
    assert layer_mapping([[2], [4, 5], []], 6, 3) == [(2,), (4, 5), ()]
    assert layer_mapping(((6,), (1,), (3,)), 6, 3) == [(6,), (1,), (3,)]  # order kept
    assert layer_mapping([2, 4, 6], 6, 3) == [(2,), (4,), (6,)]  # flat ints tolerated
    assert layer_mapping([[np.int64(2)], [4], [6]], 6, 3) == [(2,), (4,), (6,)]
    assert validate_mapping([[1], [2]], 2, 2) == [(1,), (2,)]


@pytest.mark.parametrize(
    "mapping,match",
    [
        ([[2], [4]], "2 entries but the student has 3"),
        ([[2], [4], [7]], "out of range 1..6"),
        ([[0], [4], [6]], "out of range 1..6"),
        ([[2], [4], [-1]], "out of range"),
        ([[2], [4, 4], [6]], "repeats"),
    ],
)
def test_explicit_errors(mapping, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        layer_mapping(mapping, 6, 3)


def test_explicit_type_errors() -> None:
    with pytest.raises(TypeError):
        layer_mapping([[2], [4.0], [6]], 6, 3)
    with pytest.raises(TypeError):
        layer_mapping([[2], [True], [6]], 6, 3)


def test_unknown_strategy_lists_valid_names() -> None:
    with pytest.raises(ValueError) as e:
        layer_mapping("skip_every_other", 12, 6)
    for name in STRATEGIES:
        assert name in str(e.value)


def test_bad_counts_and_too_deep_students() -> None:
    with pytest.raises(ValueError, match="positive int"):
        layer_mapping("uniform", 0, 6)
    with pytest.raises(ValueError, match="positive int"):
        layer_mapping("uniform", 12, 0)
    with pytest.raises(ValueError, match="num_student_layers <= num_teacher_layers"):
        layer_mapping("last", 3, 6)
    with pytest.raises(ValueError, match="num_student_layers <= num_teacher_layers"):
        layer_mapping("uniform_last", 3, 6)


def test_mapping_pairs() -> None:
    assert mapping_pairs([(), (2, 7), (12,)]) == [(2, 2), (2, 7), (3, 12)]
