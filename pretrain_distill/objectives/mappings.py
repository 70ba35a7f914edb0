"""Layer mappings ``phi``: which teacher layers each student layer is distilled from.

A mapping is a ``list`` with one ``tuple`` of 1-based teacher layer indices per student layer
(``mapping[i - 1]`` is ``phi(i)`` for student layer ``i``); an empty tuple means that student layer is not
distilled. Layer 0 (the embedding output) is never produced by a strategy, but an explicit mapping may not
use it either: indices are in ``1..L_T``.

Strategies (paper 2310.08797, section 4 "Layer Mapping Strategies"; ``k = ceil(L_T / L_S)``; indices above
``L_T`` are clamped to ``L_T`` and duplicates dropped):

- ``single``:       ``phi(L_S) = {L_T}``, every other student layer unmapped.
- ``last``:         ``phi(i) = {L_T - L_S + i}`` (needs ``L_S <= L_T``).
- ``uniform``:      ``phi(i) = {k * i}`` (DistilBERT / PKD "skip").
- ``uniform_cons``: ``phi(i) = {k(i-1)+1, ..., k*i}`` -- the paper's ``[k(i-1), ki]`` read as the k
  consecutive layers, so that every teacher layer is mapped exactly once (docs/papers.md).
- ``uniform_last``: ``phi(i) = {k * i} | {L_T - L_S + i}`` (needs ``L_S <= L_T``).
- ``random``:       RAIL-KD (2109.10164): ``L_S`` distinct teacher layers drawn uniformly without
  replacement from ``candidates`` (default ``1..L_T``), sorted, one per student layer.
- explicit: a sequence of sequences of ints, validated.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Sequence
from typing import Union

import torch

LayerMapping = list[tuple[int, ...]]
"""A layer mapping: ``mapping[i - 1]`` = the teacher layers distilled into student layer ``i``."""

StrategyOrList = Union[str, Sequence[Sequence[int]]]

STRATEGIES: tuple[str, ...] = ("single", "last", "uniform", "uniform_cons", "uniform_last", "random")

_ALIASES = {
    "uniform-cons": "uniform_cons",
    "uniform_consecutive": "uniform_cons",
    "uniform+last": "uniform_last",
    "uniform-last": "uniform_last",
    "l_t": "single",
    "1-to-1-last": "last",
    "skip": "uniform",
}


def _normalise_name(strategy: str) -> str:
    name = strategy.strip().lower()
    return _ALIASES.get(name, name)


def _check_counts(num_teacher_layers: int, num_student_layers: int) -> None:
    for label, value in (
        ("num_teacher_layers", num_teacher_layers),
        ("num_student_layers", num_student_layers),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{label} must be a positive int, got {value!r}")


def _is_int(x: object) -> bool:
    """True for Python / numpy integers, False for bools."""
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def validate_mapping(
    mapping: Sequence[Sequence[int]], num_teacher_layers: int, num_student_layers: int
) -> LayerMapping:
    """Validate an explicit mapping and return it as ``list[tuple[int, ...]]``.

    Checks: one entry per student layer; every entry a sequence of ints in ``1..num_teacher_layers``;
    no duplicates within an entry. The order inside each entry is kept.
    """
    _check_counts(num_teacher_layers, num_student_layers)
    if isinstance(mapping, (str, bytes)) or not isinstance(mapping, Sequence):
        raise TypeError(f"an explicit layer mapping must be a sequence of sequences of ints, got {mapping!r}")
    if len(mapping) != num_student_layers:
        raise ValueError(
            f"explicit layer mapping has {len(mapping)} entries but the student has {num_student_layers} "
            f"layers: give one list of teacher layers per student layer (an empty list = not distilled), "
            f"got {list(mapping)!r}"
        )
    out: LayerMapping = []
    for i, entry in enumerate(mapping, start=1):
        if _is_int(entry):
            entry = (entry,)  # tolerate [2, 4, 6] meaning [[2], [4], [6]]
        if isinstance(entry, (str, bytes)) or not isinstance(entry, Iterable):
            raise TypeError(
                f"layer mapping entry for student layer {i} must be a list of ints, got {entry!r}"
            )
        layers = tuple(entry)
        for j in layers:
            if not _is_int(j):
                raise TypeError(f"layer mapping entry for student layer {i} holds a non-int {j!r}")
            if not 1 <= int(j) <= num_teacher_layers:
                raise ValueError(
                    f"layer mapping for student layer {i} names teacher layer {j}, out of range "
                    f"1..{num_teacher_layers} (1-based; layer 0 = embeddings is not a valid target)"
                )
        layers = tuple(int(j) for j in layers)
        if len(set(layers)) != len(layers):
            raise ValueError(f"layer mapping for student layer {i} repeats a teacher layer: {layers}")
        out.append(layers)
    return out


def _random_mapping(
    num_teacher_layers: int,
    num_student_layers: int,
    generator: torch.Generator | None,
    candidates: Iterable[int] | None,
) -> LayerMapping:
    pool = (
        list(range(1, num_teacher_layers + 1)) if candidates is None else sorted({int(c) for c in candidates})
    )
    bad = [c for c in pool if not 1 <= c <= num_teacher_layers]
    if bad:
        raise ValueError(f"random mapping candidates {bad} are out of range 1..{num_teacher_layers}")
    if num_student_layers > len(pool):
        raise ValueError(
            f"random mapping draws {num_student_layers} distinct teacher layers (one per student layer) but "
            f"only {len(pool)} candidate teacher layers exist: needs num_student_layers <= number of candidates"
        )
    perm = torch.randperm(len(pool), generator=generator, device="cpu")[:num_student_layers]
    chosen = sorted(pool[int(p)] for p in perm)
    return [(j,) for j in chosen]


def layer_mapping(
    strategy: StrategyOrList,
    num_teacher_layers: int,
    num_student_layers: int,
    *,
    generator: torch.Generator | None = None,
    candidates: Iterable[int] | None = None,
) -> LayerMapping:
    """The layer mapping ``phi`` of eq. 6 as one tuple of 1-based teacher layers per student layer.

    Args:
        strategy: one of :data:`STRATEGIES` (``"uniform-cons"`` / ``"uniform+last"`` spellings accepted),
            or an explicit mapping (a sequence with one sequence of teacher layers per student layer).
        num_teacher_layers: ``L_T``.
        num_student_layers: ``L_S``.
        generator: ``random`` only: the ``torch.Generator`` to draw from (CPU); ``None`` = global RNG.
            Seed it from ``(seed, epoch)`` to redraw deterministically per epoch.
        candidates: ``random`` only: the teacher layers to draw from (default ``1..L_T``). RAIL-KD in the
            task-specific stage draws from the teacher's *intermediate* layers: pass
            ``candidates=range(1, L_T)`` and ``num_student_layers = L_S - 1``, then append ``()`` for the
            student's last layer if it is not distilled.

    Returns:
        ``list[tuple[int, ...]]`` of length ``num_student_layers``; indices in ``1..L_T``, ascending within
        each tuple for the named strategies.
    """
    if not isinstance(strategy, str):
        if candidates is not None:
            raise ValueError("candidates= only applies to the 'random' strategy")
        return validate_mapping(strategy, num_teacher_layers, num_student_layers)
    _check_counts(num_teacher_layers, num_student_layers)
    name = _normalise_name(strategy)
    if name not in STRATEGIES:
        raise ValueError(
            f"unknown layer mapping strategy {strategy!r}; valid: {', '.join(STRATEGIES)} "
            f"or an explicit list with one list of teacher layers per student layer"
        )
    if candidates is not None and name != "random":
        raise ValueError(f"candidates= only applies to the 'random' strategy, not {name!r}")
    L_T, L_S = num_teacher_layers, num_student_layers
    k = math.ceil(L_T / L_S)
    if name in ("last", "uniform_last") and L_S > L_T:
        raise ValueError(
            f"the {name!r} mapping needs num_student_layers <= num_teacher_layers, got {L_S} > {L_T}"
        )

    def uniq(xs: Iterable[int]) -> tuple[int, ...]:
        return tuple(sorted({min(x, L_T) for x in xs}))

    if name == "single":
        return [()] * (L_S - 1) + [(L_T,)]
    if name == "last":
        return [(L_T - L_S + i,) for i in range(1, L_S + 1)]
    if name == "uniform":
        return [uniq([k * i]) for i in range(1, L_S + 1)]
    if name == "uniform_cons":
        return [uniq(range(k * (i - 1) + 1, k * i + 1)) for i in range(1, L_S + 1)]
    if name == "uniform_last":
        return [uniq([k * i, L_T - L_S + i]) for i in range(1, L_S + 1)]
    return _random_mapping(L_T, L_S, generator, candidates)


def reachable_mapping(
    strategy: StrategyOrList,
    num_teacher_layers: int,
    num_student_layers: int,
    *,
    candidates: Iterable[int] | None = None,
) -> LayerMapping:
    """Every teacher layer each student layer can ever be mapped to under ``strategy``.

    For the fixed strategies and explicit lists this is :func:`layer_mapping` itself. For ``random``
    (sorted draw of ``L_S`` distinct layers from ``n`` sorted candidates ``c_1 < ... < c_n``), student layer
    ``i`` receives the i-th smallest draw, which can be any of ``c_i, ..., c_{n - L_S + i}``. Use it to create
    all the projections a random mapping may need up front (see :class:`HiddenStateProjections`).
    """
    if isinstance(strategy, str) and _normalise_name(strategy) == "random":
        _check_counts(num_teacher_layers, num_student_layers)
        pool = (
            list(range(1, num_teacher_layers + 1))
            if candidates is None
            else sorted({int(c) for c in candidates})
        )
        # validate via one draw (range / count errors)
        _random_mapping(num_teacher_layers, num_student_layers, torch.Generator().manual_seed(0), pool)
        n = len(pool)
        return [tuple(pool[i - 1 : n - num_student_layers + i]) for i in range(1, num_student_layers + 1)]
    return layer_mapping(strategy, num_teacher_layers, num_student_layers, candidates=candidates)


def mapping_pairs(mapping: Sequence[Sequence[int]]) -> list[tuple[int, int]]:
    """Flatten a mapping into its ``(student_layer, teacher_layer)`` pairs, 1-based, in order."""
    return [(i, int(j)) for i, layers in enumerate(mapping, start=1) for j in layers]
