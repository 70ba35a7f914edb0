"""No shipped config can rot: every YAML under configs/ validates, every DeepSpeed JSON parses."""

from __future__ import annotations

import json

import pytest

from pretrain_distill.core.config_loading import CONFIG_ROOT, load_config
from pretrain_distill.run_config import RunConfig

RUN_YAMLS = sorted(p for p in CONFIG_ROOT.rglob("*.yaml") if p.parent.name != "finetune")
FINETUNE_YAMLS = sorted((CONFIG_ROOT / "finetune").glob("*.yaml"))


def test_configs_are_shipped():
    assert len(RUN_YAMLS) >= 10, "expected students/, objectives/, data/ and experiments/ configs"


@pytest.mark.parametrize("path", RUN_YAMLS, ids=lambda p: str(p.relative_to(CONFIG_ROOT)))
def test_run_yaml_validates(path):
    assert isinstance(load_config(RunConfig, [path]), RunConfig)


@pytest.mark.parametrize("path", FINETUNE_YAMLS, ids=lambda p: str(p.relative_to(CONFIG_ROOT)))
def test_finetune_yaml_validates(path):
    from finetune.finetune_config import FinetuneConfig

    assert isinstance(load_config(FinetuneConfig, [path]), FinetuneConfig)


@pytest.mark.parametrize("path", sorted(CONFIG_ROOT.glob("deepspeed/*.json")), ids=lambda p: p.name)
def test_deepspeed_json_parses(path):
    assert isinstance(json.loads(path.read_text()), dict)
