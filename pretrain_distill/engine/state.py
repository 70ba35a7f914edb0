"""What a checkpoint holds beyond DeepSpeed's own files, and writing / reading a whole checkpoint.

A checkpoint directory ``step_XXXXXXXX/`` contains:

- DeepSpeed's files (the Distiller module = student + learned projections/maps, optimizer and LR
  scheduler state, its step counters), written by every rank;
- ``rank_XXXXX.safetensors`` per rank: the torch / CUDA RNG states (tensors) and the Python / NumPy
  ones (JSON in the header);
- ``loader.json``: the data loader position (the same on every rank, see ``ShardLoader.state_dict``);
- ``student/``: the student alone as a Hugging Face model directory (fp32), for export and ``init_from``
  (with ``student_vocab.json`` when its vocabulary is pruned);
- ``config.yaml``: the resolved run config;
- ``COMPLETE``: JSON with the :class:`TrainState` counters, the world size, the time it was written,
  the last logged losses and every file's size and SHA-256.

A checkpoint resumes on the world size it was written with (exactly: same batches, same RNG streams) or
on another one (elastic): the loader re-splits the rest of the epoch, optimizer and scheduler state
come from DeepSpeed (ZeRO-0 directly, ZeRO-1/2/3 through its universal checkpoint) and each rank's RNG
is seeded afresh from ``(seed, step, rank)``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
import shutil
import time
from argparse import Namespace
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from pretrain_distill.core.checkpoint_trust import read_metadata
from pretrain_distill.core.config_loading import save_config
from pretrain_distill.core.distributed import DistEnv, barrier
from pretrain_distill.core.seeds import derive_seed
from pretrain_distill.engine.checkpoint import (
    CheckpointStore,
    restricted_torch_load,
    rng_state,
    set_rng_state,
)
from pretrain_distill.run_config import RunConfig
from pretrain_distill.vocab import StudentVocab

log = logging.getLogger(__name__)
LOADER_FILE = "loader.json"


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
    return f"rank_{rank:05d}.safetensors"


def save_rng(path: Path) -> None:
    """This process's RNG states as one safetensors file (tensors + JSON header)."""
    tensors, data = rng_state()
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata={"rng": json.dumps(data)})


def load_rng(path: Path) -> None:
    """Restore the RNG states :func:`save_rng` wrote."""
    with safe_open(str(path), "pt") as handle:
        data = json.loads(handle.metadata()["rng"])
    set_rng_state(load_file(str(path)), data)


def fresh_rng(seed: int, step: int, rank: int) -> None:
    """Seed every global RNG from ``(seed, step, rank)`` (a rank whose saved stream does not apply)."""
    value = derive_seed(seed, step, rank)
    random.seed(value)
    np.random.seed(value)
    torch.manual_seed(value)


def student_state_dict(student: nn.Module, zero_stage: int) -> dict[str, torch.Tensor]:
    """The student's full weights in fp32 on CPU (gathered from all ranks under ZeRO-3)."""
    params = list(student.parameters())
    if zero_stage == 3:
        # deepspeed is heavy to import; a ZeRO-3 run has loaded it already.
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
    vocab: StudentVocab | None = None,
) -> Path:
    """Write one complete checkpoint of the run (collective: every rank calls it); returns its path.
    A pruned ``vocab`` is saved beside the student (``student/student_vocab.json``)."""
    if dist_env.is_main:
        store.begin(state.step)
    barrier()
    staged = store.staging(state.step)
    engine.save_checkpoint(str(store.root), tag=staged.name, save_latest=False)
    save_rng(staged / _rank_file(dist_env.rank))
    stage = engine.zero_optimization_stage()
    # Under ZeRO-3 gathering the weights is a collective: every rank takes part; otherwise rank 0 alone.
    weights = student_state_dict(student, stage) if stage == 3 or dist_env.is_main else None
    if dist_env.is_main:
        student.save_pretrained(staged / "student", state_dict=weights)
        if vocab is not None:
            vocab.save(staged / "student")
        save_config(cfg, staged / "config.yaml")
        (staged / LOADER_FILE).write_text(json.dumps(loader.state_dict()))
    barrier()
    final = store.root / staged.name.removeprefix(".tmp-")
    if dist_env.is_main:
        final = store.commit(
            state.step,
            {
                "state": dataclasses.asdict(state),
                "world_size": dist_env.world_size,
                "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            },
        )
    barrier()
    return final


def deepspeed_source(
    checkpoint: Path | None, ds_config: dict[str, Any], dist_env: DistEnv, run_dir: Path
) -> Path | None:
    """Where DeepSpeed loads ``checkpoint`` from; call before ``deepspeed.initialize``.

    The checkpoint itself on its own world size, and under ZeRO-0 (one optimizer state, not
    partitioned). Under ZeRO-1/2/3 on another world size its optimizer state is partitioned for the
    old ranks: rank 0 converts it to DeepSpeed's universal checkpoint in ``run_dir/universal/``
    (``ds_to_universal``, reading through :func:`restricted_torch_load`), ``ds_config`` is set to load
    that, and every rank waits for it.
    """
    if checkpoint is None:
        return None
    stage = int(ds_config.get("zero_optimization", {}).get("stage", 0))
    if read_metadata(checkpoint)["world_size"] == dist_env.world_size or stage == 0:
        return checkpoint
    target = run_dir / "universal" / checkpoint.name
    if dist_env.is_main:
        # deepspeed is heavy to import; only an elastic ZeRO resume converts checkpoints.
        from deepspeed.checkpoint.ds_to_universal import main as ds_to_universal

        shutil.rmtree(target, ignore_errors=True)
        args = Namespace(
            input_folder=str(checkpoint),
            output_folder=str(target),
            num_extract_workers=1,
            num_merge_workers=1,
            keep_temp_folder=False,
            strict=True,
            inject_missing_state=True,  # our checkpoints have no TP / PP: the default info fits
        )
        with restricted_torch_load():
            ds_to_universal(args)
    barrier()
    ds_config["checkpoint"] = {**ds_config.get("checkpoint", {}), "load_universal": True}
    return target


def load_checkpoint(
    checkpoint: Path, engine: Any, loader: Any, dist_env: DistEnv, seed: int, source: Path | None = None
) -> TrainState:
    """Restore the engine (weights, optimizer, scheduler; from ``source``, see :func:`deepspeed_source`),
    the loader position and this rank's RNG; returns the counters. ``checkpoint`` must have been
    verified (``verify_checkpoint``)."""
    meta = read_metadata(checkpoint)
    state = TrainState(**meta["state"])
    source = source or checkpoint
    with restricted_torch_load():
        path, _ = engine.load_checkpoint(str(source.parent), tag=source.name)
    if path is None:
        raise RuntimeError(f"DeepSpeed could not load the checkpoint in {source}")
    if source != checkpoint:  # the universal copy served its purpose
        barrier()
        if dist_env.is_main:
            shutil.rmtree(source.parent, ignore_errors=True)
    loader.load_state_dict(json.loads((checkpoint / LOADER_FILE).read_text()))
    if meta["world_size"] == dist_env.world_size:
        load_rng(checkpoint / _rank_file(dist_env.rank))
    else:
        if dist_env.is_main:
            log.warning(
                "elastic resume: %s was written by %d ranks, this run has %d: the rest of epoch %d is "
                "re-split over the new ranks, RNG streams start afresh",
                checkpoint, meta["world_size"], dist_env.world_size, state.epoch,
            )  # fmt: skip
        fresh_rng(seed, state.step, dist_env.rank)
    return state
