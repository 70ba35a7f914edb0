"""DeepSpeed JSON + run config merge: one source of truth, disagreements are errors."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from pretrain_distill.core.config_loading import CONFIG_ROOT
from pretrain_distill.core.errors import ConfigError
from pretrain_distill.engine.deepspeed_config import build_deepspeed_config, clips_on_device
from pretrain_distill.run_config import TrainConfig

CPU = torch.device("cpu")
GPU = torch.device("cuda", 0)


def _json(tmp_path, data) -> str:
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(data))
    return str(path)


@pytest.mark.parametrize("name", sorted(p.name for p in (CONFIG_ROOT / "deepspeed").glob("*.json")))
def test_shipped_json_merge(name, recwarn):
    cfg = TrainConfig(deepspeed=f"deepspeed/{name}", micro_batch_size=4, grad_accum=2, precision="bf16")
    ds = build_deepspeed_config(cfg, world_size=2, device=GPU)
    assert ds["train_micro_batch_size_per_gpu"] == 4
    assert ds["gradient_accumulation_steps"] == 2
    assert ds["train_batch_size"] == 16
    # ZeRO-1/2: the engine clips on the device (DeepSpeed would read the norm on the host); else DeepSpeed
    assert clips_on_device(ds) == (name in ("zero1.json", "zero2.json"))
    assert ds["gradient_clipping"] == (0.0 if clips_on_device(ds) else 1.0)
    # bf16 under ZeRO-0 on a GPU: DeepSpeed's wrapper reads every gradient on the host, and says so
    assert any("bf16 under ZeRO-0" in str(w.message) for w in recwarn) == (name == "zero0.json")
    assert ds["bf16"]["enabled"] and not ds["fp16"]["enabled"]
    assert ds["zero_optimization"]["stage"] == int(name[4])


def test_zero_stage_override(tmp_path):
    cfg = TrainConfig(deepspeed="deepspeed/zero2.json", zero_stage=1, precision="fp32")
    ds = build_deepspeed_config(cfg, 1, CPU)
    assert ds["zero_optimization"]["stage"] == 1 and not ds["bf16"]["enabled"]


@pytest.mark.parametrize(
    "json_data, match",
    [
        ({"train_micro_batch_size_per_gpu": 16}, "train_micro_batch_size_per_gpu=16 disagrees"),
        ({"gradient_accumulation_steps": 4}, "gradient_accumulation_steps=4 disagrees"),
        ({"train_batch_size": 1024}, "train_batch_size=1024 disagrees"),
        ({"gradient_clipping": 0.5}, "gradient_clipping=0.5 disagrees"),
        ({"fp16": {"enabled": True}}, "fp16.enabled=True disagrees"),
        ({"optimizer": {"type": "Adam"}}, "'optimizer' section"),
        ({"scheduler": {"type": "WarmupLR"}}, "'scheduler' section"),
        ({"zero_optimization": {"stage": 7}}, "ZeRO stage must be 0-3"),
        ({"zero_optimization": {"stage": 2, "compute_grad_norm": False}}, "needs the gradient norm"),
    ],
)
def test_disagreements_are_errors(tmp_path, json_data, match):
    cfg = TrainConfig(deepspeed=_json(tmp_path, json_data), micro_batch_size=32, grad_accum=1)
    with pytest.raises(ConfigError, match=match):
        build_deepspeed_config(cfg, 2, GPU)


def test_agreeing_and_auto_values_pass(tmp_path):
    data = {
        "train_micro_batch_size_per_gpu": 8,
        "gradient_accumulation_steps": "auto",
        "train_batch_size": 32,
        "bf16": {"enabled": "auto"},
        "zero_optimization": {"stage": 1},
    }
    cfg = TrainConfig(deepspeed=_json(tmp_path, data), micro_batch_size=8, grad_accum=2, precision="bf16")
    ds = build_deepspeed_config(cfg, 2, GPU)
    assert ds["gradient_accumulation_steps"] == 2 and ds["bf16"]["enabled"]


def test_fp16_on_cpu_is_refused():
    with pytest.raises(ConfigError, match="fp16 is not supported on CPU"):
        build_deepspeed_config(replace(TrainConfig(), precision="fp16"), 1, CPU)


def test_missing_or_broken_json(tmp_path):
    with pytest.raises(ConfigError, match="DeepSpeed config not found"):
        build_deepspeed_config(TrainConfig(deepspeed="deepspeed/nope.json"), 1, CPU)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        build_deepspeed_config(TrainConfig(deepspeed=str(bad)), 1, CPU)


@pytest.mark.parametrize("path", sorted((CONFIG_ROOT / "experiments").glob("*.yaml")), ids=lambda p: p.stem)
def test_experiment_configs_validate_and_merge(path):
    from pretrain_distill.run_config import load_run_config

    cfg = load_run_config([str(path)])
    ds = build_deepspeed_config(cfg.train, world_size=8, device=GPU)
    assert ds["train_batch_size"] == cfg.train.micro_batch_size * cfg.train.grad_accum * 8
    assert cfg.train.betas == (0.9, 0.98) and cfg.train.warmup_ratio == 0.05
    if "minilmv2" in cfg.objective.weights:
        assert cfg.objective.teacher_layer == "L_T-1"
    if path.stem.startswith("minilm"):  # the laptop configs run on CPU as they are
        build_deepspeed_config(cfg.train, world_size=1, device=CPU)


def test_shipped_experiments_exist():
    names = {p.stem for p in (CONFIG_ROOT / "experiments").glob("*.yaml")}
    assert {
        "minilm_3l_minilmv2",
        "minilm_hs_uniform",
        "bert_base_6l_minilmv2",
        "bert_base_6l_hs_uniform_last",
        "bert_base_6l_od_stage",
    } <= names


def test_bf16_grad_overflow_check_is_off_unless_the_json_asks(tmp_path):
    """DeepSpeed's check syncs the host every step; the trainer's loss guard replaces it (a JSON may opt in)."""
    cfg = TrainConfig(deepspeed="deepspeed/zero2.json", precision="bf16")
    assert build_deepspeed_config(cfg, 1, torch.device("cpu"))["bf16"]["check_grad_overflow"] is False
    data = {"zero_optimization": {"stage": 2}, "bf16": {"check_grad_overflow": True}}
    cfg = TrainConfig(deepspeed=_json(tmp_path, data), precision="bf16")
    assert build_deepspeed_config(cfg, 1, torch.device("cpu"))["bf16"]["check_grad_overflow"] is True
