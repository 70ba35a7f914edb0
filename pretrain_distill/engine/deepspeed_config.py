"""The DeepSpeed JSON of a run: ``configs/deepspeed/*.json`` (ZeRO and communication settings) merged
with the run config, which alone owns batch sizes, accumulation, clipping, precision, optimizer and
schedule.

A key the run config owns may appear in the JSON only with the same value (or ``"auto"``); anything else
is a :class:`ConfigError` naming both values, never a silent pick of one of them.
"""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path
from typing import Any

import torch

from pretrain_distill.core.config_loading import CONFIG_ROOT
from pretrain_distill.core.errors import ConfigError
from pretrain_distill.run_config import TrainConfig


def resolve_deepspeed_path(name: str) -> Path:
    """``train.deepspeed`` as a file: absolute, relative to the working directory or to ``configs/``."""
    for candidate in (Path(name), CONFIG_ROOT / name):
        if candidate.is_file():
            return candidate
    raise ConfigError(f"train.deepspeed: DeepSpeed config not found: {name} (looked in . and {CONFIG_ROOT})")


def load_deepspeed_json(name: str) -> dict[str, Any]:
    path = resolve_deepspeed_path(name)
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"train.deepspeed: {path} is not valid JSON: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"train.deepspeed: {path} must hold a JSON object")
    return data


def _agree(ds: dict[str, Any], key: str, value: Any, owner: str, source: str) -> None:
    """Set ``ds[key] = value`` unless the JSON already holds a different, non-"auto" value."""
    given = ds.get(key, "auto")
    if given != "auto" and given != value:
        raise ConfigError(
            f"{source}: {key}={given!r} disagrees with {owner}={value!r} (the run config is the one source "
            f'of truth: remove the key from the JSON or set it to "auto")'
        )
    ds[key] = value


def clips_on_device(ds: dict[str, Any]) -> bool:
    """Whether the run clips gradients itself, on the device: under ZeRO-1/2, where DeepSpeed's own
    clipping reads the gradient norm on the host at every optimizer step."""
    return ds.get("zero_optimization", {}).get("stage", 0) in (1, 2)


def build_deepspeed_config(train: TrainConfig, world_size: int, device: torch.device) -> dict[str, Any]:
    """The full DeepSpeed config dict for ``deepspeed.initialize`` (see module docstring)."""
    source = f"train.deepspeed ({train.deepspeed})"
    ds = copy.deepcopy(load_deepspeed_json(train.deepspeed))
    for owned in ("optimizer", "scheduler"):
        if owned in ds:
            raise ConfigError(
                f"{source}: has an '{owned}' section; the optimizer (AdamW) and LR schedule come from the "
                f"run config (train.lr, train.betas, train.warmup_ratio): remove it"
            )
    if train.micro_batch_size < 1 or train.grad_accum < 1:
        raise ConfigError("train.micro_batch_size and train.grad_accum must be >= 1")
    _agree(ds, "train_micro_batch_size_per_gpu", train.micro_batch_size, "train.micro_batch_size", source)
    _agree(ds, "gradient_accumulation_steps", train.grad_accum, "train.grad_accum", source)
    global_batch = train.micro_batch_size * train.grad_accum * world_size
    _agree(ds, "train_batch_size", global_batch, "micro_batch_size*grad_accum*world_size", source)
    _agree(ds, "gradient_clipping", train.grad_clip, "train.grad_clip", source)

    if train.precision == "fp16" and device.type == "cpu":
        raise ConfigError(
            "train.precision=fp16 is not supported on CPU (DeepSpeed refuses it): use fp32 or bf16"
        )
    for name in ("bf16", "fp16"):
        section = ds.setdefault(name, {})
        enabled = train.precision == name
        given = section.get("enabled", "auto")
        if given != "auto" and bool(given) != enabled:
            raise ConfigError(
                f"{source}: {name}.enabled={given!r} disagrees with train.precision={train.precision!r}"
            )
        section["enabled"] = enabled
    # DeepSpeed's bf16 gradient-overflow check reads a flag on the host at every optimizer step (a device
    # synchronisation); the trainer's own guard on the loss replaces it without one. A JSON may turn it on.
    ds["bf16"].setdefault("check_grad_overflow", False)

    zero = ds.setdefault("zero_optimization", {})
    if train.zero_stage is not None:
        zero["stage"] = train.zero_stage
    stage = zero.setdefault("stage", 0)
    if stage not in (0, 1, 2, 3):
        raise ConfigError(f"ZeRO stage must be 0-3, got {stage}")
    if clips_on_device(ds):
        if train.grad_clip > 0 and zero.get("compute_grad_norm") is False:
            raise ConfigError(
                f"{source}: zero_optimization.compute_grad_norm=false, but train.grad_clip={train.grad_clip} "
                "needs the gradient norm: set train.grad_clip=0 or remove compute_grad_norm"
            )
        # DeepSpeed's ZeRO-1/2 clipping checks the norm on the host (a synchronisation per step): the
        # engine clips the same way on the device instead (Trainer._clip_on_device).
        ds["gradient_clipping"] = 0.0
    elif stage == 0 and train.precision == "bf16" and device.type == "cuda":
        warnings.warn(
            "train.precision=bf16 under ZeRO-0: DeepSpeed's bf16 wrapper checks every gradient for "
            "overflow on the host, a GPU synchronisation per parameter per step; ZeRO-1 "
            "(train.zero_stage=1) keeps the same copies on one GPU and steps without any",
            stacklevel=2,
        )
    ds.setdefault("steps_per_print", 10**9)  # our logger reports; keep DeepSpeed's own prints quiet
    ds.setdefault("wall_clock_breakdown", False)
    return ds
