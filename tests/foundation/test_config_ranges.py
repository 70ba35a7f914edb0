"""Every numeric field of the run config has a declared range, checked at load time, named on error."""

from __future__ import annotations

import dataclasses
import typing

import pytest

from finetune.finetune_config import FinetuneConfig, load_finetune_config
from pretrain_distill.core.config_loading import check_range
from pretrain_distill.core.errors import ConfigError
from pretrain_distill.run_config import RunConfig, load_run_config


def _numeric(tp) -> bool:
    """Does the annotation hold a number anywhere (int / float, inside Optional, Union, list, dict)?"""
    if tp in (int, float):
        return True
    return any(_numeric(arg) for arg in typing.get_args(tp) if arg is not Ellipsis)


def _dataclasses(cls) -> list[type]:
    """``cls`` and every dataclass its fields hold (directly, or in a list / Optional)."""
    found = [cls]
    for tp in typing.get_type_hints(cls).values():
        for inner in (tp, *typing.get_args(tp)):
            if dataclasses.is_dataclass(inner) and inner not in found:
                found += [c for c in _dataclasses(inner) if c not in found]
    return found


@pytest.mark.parametrize("root", [RunConfig, FinetuneConfig], ids=["distill", "finetune"])
def test_every_numeric_field_declares_a_range(root):
    for cls in _dataclasses(root):
        hints = typing.get_type_hints(cls)
        numeric = {f.name for f in dataclasses.fields(cls) if _numeric(hints[f.name])}
        declared = set(getattr(cls, "RANGES", {}))
        assert numeric == declared, f"{cls.__name__}: {numeric ^ declared}"
    load_run_config()  # the defaults satisfy them
    load_finetune_config()


@pytest.mark.parametrize(
    "override,message",
    [
        ("lr=-1", "lr: must be > 0, got -1.0"),
        ("batch_size=0", "batch_size: must be >= 1, got 0"),
        ("seeds=[1, -2]", r"seeds\[1\]: must be >= 0, got -2"),
        ("distill.temperature=0", r"distill.temperature: must be > 0, got 0"),
        ("custom.dev_fraction=1.0", r"custom.dev_fraction: must be in \(0, 1\), got 1.0"),
    ],
)
def test_finetune_ranges_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_finetune_config(overrides=[override])


@pytest.mark.parametrize(
    "override,message",
    [
        ("train.save_every=-5", "train.save_every: must be >= 1, got -5"),
        ("train.lr=-1", "train.lr: must be >= 0, got -1.0"),
        ("data.mlm_probability=1.5", r"data.mlm_probability: must be in \(0, 1\), got 1.5"),
        ("train.betas=[0.9, 1.0]", r"train.betas\[1\]: must be in \[0, 1\), got 1.0"),
        ("objective.weights={hs: -1}", "objective.weights.hs: must be >= 0, got -1.0"),
        ("objective.mapping=[[0], [2]]", r"objective.mapping\[0\]\[0\]: must be >= 1, got 0"),
        ("train.zero_stage=4", r"train.zero_stage: must be in \[0, 3\], got 4"),
        ("data.num_workers=-1", "data.num_workers: must be >= 0"),
        ("student.layers=0", "student.layers: must be >= 1"),
        ("train.warmup_ratio=.nan", "train.warmup_ratio: must be in"),
        ("objective.remap_every=0", "objective.remap_every: must be >= 1"),
    ],
)
def test_out_of_range_values_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_run_config(overrides=[override])


def test_range_forms():
    check_range(None, "> 0", "k")  # unset optional
    check_range("epoch", ">= 1", "k")  # the string alternative of a union
    for value, spec in [(0, "[0, 1)"), (1, "(0, 1]"), (0.5, "(0, 1)"), (3, "<= 3"), (-1, "< 0")]:
        check_range(value, spec, "k")
    for value, spec in [(1, "[0, 1)"), (0, "(0, 1]"), (4, "<= 3"), (0, "< 0")]:
        with pytest.raises(ConfigError, match="^k: must be"):
            check_range(value, spec, "k")
    with pytest.raises(ValueError, match="bad range spec"):
        check_range(1, "positive", "k")
