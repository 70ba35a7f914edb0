"""What a checkpoint holds beyond DeepSpeed's own files, and writing / reading a whole checkpoint.

A checkpoint directory ``step_XXXXXXXX/`` contains:

- DeepSpeed's files (the Distiller module = student + learned projections/maps, optimizer and LR
  scheduler state, its step counters), written by every rank;
- ``rank_XXXXX.pt`` per rank: the data loader position and the Python / NumPy / torch / CUDA RNG states;
- ``student/``: the student alone as a Hugging Face model directory (fp32), for export and ``init_from``;
- ``config.yaml``: the resolved run config;
- ``COMPLETE``: JSON with the :class:`TrainState` counters, the world size and the last logged losses.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pretrain_distill.config import RunConfig
from pretrain_distill.configuration import ConfigError, save_config
from pretrain_distill.engine.checkpoint import CheckpointStore, read_metadata, rng_state, set_rng_state
from pretrain_distill.engine.distributed import DistEnv, barrier


@dataclass
class TrainState:
    """The loop's counters (everything else is derived from them and the config)."""

    step: int = 0  # optimizer steps done
    micro_step: int = 0  # micro-batches consumed (seeds the MLM masking)
    epoch: int = 0  # current pass over the shards
    tokens: int = 0  # non-padding tokens seen, all ranks
    nan_skipped: int = 0  # micro-batches skipped for a non-finite loss
    last_losses: dict[str, float] = field(default_factory=dict)  # last logged loss terms


def _rank_file(rank: int) -> str:
    return f"rank_{rank:05d}.pt"


def student_state_dict(student: nn.Module, zero_stage: int) -> dict[str, torch.Tensor]:
    """The student's full weights in fp32 on CPU (gathered from all ranks under ZeRO-3)."""
    params = list(student.parameters())
    if zero_stage == 3:
        import deepspeed

        with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
            return {k: v.detach().float().cpu().clone() for k, v in student.state_dict().items()}
    return {k: v.detach().float().cpu().clone() for k, v in student.state_dict().items()}


def save_checkpoint(
    store: CheckpointStore,
    engine: Any,
    student: nn.Module,
    loader: Any,
    state: TrainState,
    cfg: RunConfig,
    dist_env: DistEnv,
) -> Path:
    """Write one complete checkpoint of the run (collective: every rank calls it); returns its path."""
    if dist_env.is_main:
        store.begin(state.step)
    barrier()
    staged = store.staging(state.step)
    engine.save_checkpoint(str(store.root), tag=staged.name, save_latest=False)
    torch.save({"loader": loader.state_dict(), "rng": rng_state()}, staged / _rank_file(dist_env.rank))
    stage = engine.zero_optimization_stage()
    # Under ZeRO-3 gathering the weights is a collective: every rank takes part; otherwise rank 0 alone.
    weights = student_state_dict(student, stage) if stage == 3 or dist_env.is_main else None
    if dist_env.is_main:
        student.save_pretrained(staged / "student", state_dict=weights)
        save_config(cfg, staged / "config.yaml")
    barrier()
    final = store.root / staged.name.removeprefix(".tmp-")
    if dist_env.is_main:
        final = store.commit(
            state.step, {"state": dataclasses.asdict(state), "world_size": dist_env.world_size}
        )
    barrier()
    return final


def load_checkpoint(checkpoint: Path, engine: Any, loader: Any, dist_env: DistEnv) -> TrainState:
    """Restore the engine (weights, optimizer, scheduler), this rank's loader and RNG; returns the counters."""
    meta = read_metadata(checkpoint)
    if meta["world_size"] != dist_env.world_size:
        raise ConfigError(
            f"train.resume: {checkpoint} was written by {meta['world_size']} ranks, this run has {dist_env.world_size}: "
            "exact resume (data position per rank) needs the same world size"
        )
    path, _ = engine.load_checkpoint(str(checkpoint.parent), tag=checkpoint.name)
    if path is None:
        raise RuntimeError(f"DeepSpeed could not load the checkpoint in {checkpoint}")
    extra = torch.load(checkpoint / _rank_file(dist_env.rank), weights_only=False)
    loader.load_state_dict(extra["loader"])
    set_rng_state(extra["rng"])
    return TrainState(**meta["state"])
