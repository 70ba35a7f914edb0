"""Config composition, overrides and validation errors (pretrain_distill.core.config_loading)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Literal, Optional, Union

import pytest
import yaml

from pretrain_distill.core.command_line import add_config_arguments
from pretrain_distill.core.config_loading import deep_merge, from_dict, load_config, save_config
from pretrain_distill.core.errors import ConfigError
from pretrain_distill.core.overrides import parse_overrides, split_command_line
from pretrain_distill.run_config import RunConfig, load_run_config


@dataclass
class Inner:
    n: int = 1
    x: float = 0.5
    mode: Literal["a", "b"] = "a"


@dataclass
class Outer:
    inner: Inner = field(default_factory=Inner)
    name: str = "run"
    tags: list[str] = field(default_factory=list)
    weights: dict[str, float] = field(default_factory=dict)
    opt: Optional[int] = None
    mapping: Union[list[list[int]], str] = "uniform"
    pair: tuple[float, float] = (0.9, 0.98)


def write(path, data):
    path.write_text(yaml.safe_dump(data))
    return path


def test_defaults_compose_in_order_and_file_keys_win(tmp_path):
    write(tmp_path / "a.yaml", {"inner": {"n": 2, "x": 1.0}, "name": "from-a"})
    write(tmp_path / "b.yaml", {"inner": {"n": 3}})
    top = write(tmp_path / "top.yaml", {"defaults": ["a", "b.yaml"], "name": "top"})
    cfg = load_config(Outer, [top])
    assert (cfg.inner.n, cfg.inner.x, cfg.name) == (3, 1.0, "top")


def test_overrides_both_syntaxes_beat_files(tmp_path):
    top = write(tmp_path / "top.yaml", {"inner": {"n": 2}})
    cfg = load_config(Outer, [top], ["inner.n=7", "--inner.x", "5e-4", "--name=cli", "tags=[p, q]"])
    assert cfg.inner.n == 7
    assert cfg.inner.x == pytest.approx(5e-4)  # YAML 1.1 reads 5e-4 as a string: still a float
    assert cfg.name == "cli" and cfg.tags == ["p", "q"]


def test_nested_types_and_unions():
    cfg = from_dict(Outer, {"mapping": [[2], [4, 5]], "weights": {"hs": 1}, "opt": None, "pair": [0.8, 0.9]})
    assert cfg.mapping == [[2], [4, 5]] and cfg.weights == {"hs": 1.0} and cfg.pair == (0.8, 0.9)
    assert from_dict(Outer, {"mapping": "last"}).mapping == "last"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"inner": {"nn": 1}}, "unknown config key inner.nn (did you mean inner.n?)"),
        ({"inner": {"n": "three"}}, "inner.n: expected an integer"),
        ({"inner": {"n": True}}, "inner.n: expected an integer"),
        ({"inner": {"mode": "c"}}, "inner.mode: expected one of ['a', 'b']"),
        ({"tags": "notalist"}, "tags: expected a list"),
        ({"pair": [1.0]}, "pair: expected 2 items"),
        ({"inner": 3}, "inner: expected a mapping"),
    ],
)
def test_validation_errors_name_the_key(data, message):
    with pytest.raises(ConfigError) as err:
        from_dict(Outer, data)
    assert message in str(err.value)


def test_missing_file_and_cycle_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="config file not found: nope.yaml"):
        load_config(Outer, ["nope.yaml"])
    write(tmp_path / "x.yaml", {"defaults": ["y"]})
    write(tmp_path / "y.yaml", {"defaults": ["x"]})
    with pytest.raises(ConfigError, match="cycle"):
        load_config(Outer, [tmp_path / "x.yaml"])


def test_override_syntax_errors():
    with pytest.raises(ConfigError, match="has no value"):
        parse_overrides(["--inner.n"])
    with pytest.raises(ConfigError, match="not of the form"):
        parse_overrides(["justaword"])


def test_deep_merge_replaces_non_mappings():
    assert deep_merge({"a": {"b": 1, "c": [1]}}, {"a": {"c": [2]}}) == {"a": {"b": 1, "c": [2]}}


def test_split_files_and_overrides():
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    files, overrides = split_command_line(parser, ["a.yaml", "x.y=1", "--z", "2", "b.yaml"])
    assert files == ["a.yaml", "b.yaml"] and overrides == ["x.y=1", "--z", "2"]


def test_resolved_config_round_trips(tmp_path):
    cfg = load_run_config([], ["train.lr=3e-4", "objective.mapping=[[1],[3]]", "student.preset=6L"])
    path = save_config(cfg, tmp_path / "config.yaml")
    again = load_config(RunConfig, [path])
    assert again == cfg
