"""Who am I in the job: rank, world size and rendezvous address from whichever launcher started us.

Launchers and the variables they set:

- ``torchrun`` / ``deepspeed`` / ``torch.distributed.launch``: ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
  ``MASTER_ADDR``, ``MASTER_PORT``.
- SLURM ``srun`` (one task per GPU): ``SLURM_PROCID``, ``SLURM_NTASKS``, ``SLURM_LOCALID``,
  ``SLURM_JOB_NODELIST`` (the first node hosts the rendezvous), ``SLURM_JOB_ID`` (picks the port).
- Nothing (a laptop, a notebook, a test): one process, rank 0, a free local port.

:func:`init_distributed` exports the resolved values (DeepSpeed reads them from the environment and would
otherwise look for MPI) and starts the process group: NCCL on GPU, gloo on CPU.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch

from pretrain_distill.core.errors import ConfigError

DEFAULT_PORT = 29500
_LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class DistEnv:
    """This process's place in the job."""

    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int
    launcher: str  # "torchrun" (any RANK/WORLD_SIZE launcher), "slurm" or "none"

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def first_slurm_host(nodelist: str) -> str:
    """First host of a SLURM node list: ``"gpu[003-005,009],cpu1"`` -> ``"gpu003"``."""
    match = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist.strip())
    if not match:
        raise ValueError(f"cannot parse SLURM node list {nodelist!r}")
    prefix, ranges = match.groups()
    if not ranges:
        return prefix
    return prefix + ranges.split(",")[0].split("-")[0]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def detect_env(environ: Mapping[str, str] | None = None) -> DistEnv:
    """Read rank / world / rendezvous from the launcher's variables (see module docstring)."""
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return DistEnv(
            rank=int(env["RANK"]),
            world_size=int(env["WORLD_SIZE"]),
            local_rank=int(env.get("LOCAL_RANK", 0)),
            master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
            master_port=int(env.get("MASTER_PORT", DEFAULT_PORT)),
            launcher="torchrun",
        )
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST") or "127.0.0.1"
        default_port = DEFAULT_PORT + int(env.get("SLURM_JOB_ID", "0")) % 10000
        return DistEnv(
            rank=int(env["SLURM_PROCID"]),
            world_size=int(env["SLURM_NTASKS"]),
            local_rank=int(env.get("SLURM_LOCALID", 0)),
            master_addr=env.get("MASTER_ADDR") or first_slurm_host(nodelist),
            master_port=int(env.get("MASTER_PORT", default_port)),
            launcher="slurm",
        )
    return DistEnv(
        rank=0,
        world_size=1,
        local_rank=0,
        master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
        master_port=int(env["MASTER_PORT"]) if "MASTER_PORT" in env else _free_port(),
        launcher="none",
    )


def require_device(choice: str, what: str = "device") -> None:
    """Refuse (:class:`ConfigError`, before any work) a ``cuda`` choice on a machine without a GPU;
    ``what`` names the setting in the message."""
    if choice == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{what} cuda: this machine has no visible CUDA device; choose cpu")


def resolve_device(choice: str, local_rank: int) -> torch.device:
    """``auto`` -> this rank's GPU when CUDA is present, else CPU; ``cuda`` without a GPU is an error."""
    require_device(choice)
    if choice == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    torch.cuda.set_device(local_rank % torch.cuda.device_count())
    return torch.device("cuda", local_rank % torch.cuda.device_count())


def export_rank_env(dist_env: DistEnv) -> None:
    """Set the launcher-independent variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_*``)
    that torch.distributed, DeepSpeed and the HF Trainer read, whatever launched the process."""
    os.environ.update(
        RANK=str(dist_env.rank),
        WORLD_SIZE=str(dist_env.world_size),
        LOCAL_RANK=str(dist_env.local_rank),
        MASTER_ADDR=dist_env.master_addr,
        MASTER_PORT=str(dist_env.master_port),
    )


def init_distributed(dist_env: DistEnv, device: torch.device) -> None:
    """Export the launcher-independent variables and start DeepSpeed's process group (idempotent)."""
    export_rank_env(dist_env)
    if device.type == "cpu":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    # deepspeed is heavy to import (seconds, op checks): only runs that start a process group load it.
    import deepspeed

    if device.type == "cpu":
        # DeepSpeed's CPU backend otherwise compiles its shared-memory all-reduce (60-90 s on 2 cores)
        # on the first init. Only inference uses it; training all-reduces over gloo either way.
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    if not torch.distributed.is_initialized():
        deepspeed.init_distributed(dist_backend="gloo" if device.type == "cpu" else "nccl")


def barrier() -> None:
    """Wait for every rank (no-op without a process group)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def _several_ranks() -> bool:
    initialized = torch.distributed.is_available() and torch.distributed.is_initialized()
    return initialized and torch.distributed.get_world_size() > 1


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Element-wise sum over ranks (in place; returns ``values``); one process launches no collective."""
    if _several_ranks():
        torch.distributed.all_reduce(values, op=torch.distributed.ReduceOp.SUM)
    return values


_HOST_GROUP: list = []  # the gloo group for host-side flags (created on first use, by every rank)


def _host_group():
    """A gloo process group over all ranks: collectives on CPU tensors that never touch the device."""
    if not _HOST_GROUP:
        default_is_gloo = torch.distributed.get_backend() == "gloo"
        _HOST_GROUP.append(None if default_is_gloo else torch.distributed.new_group(backend="gloo"))
    return _HOST_GROUP[0]


def any_rank(flag: bool) -> bool:
    """Whether ``flag`` is set on any rank (collective: every rank calls it at the same point).

    A host-side flag (e.g. a preemption signal) agreed over a gloo group on CPU tensors, so the GPU
    queue is never synchronised with the host; one process needs no collective at all.
    """
    if not _several_ranks():
        return flag
    value = torch.tensor([int(flag)], dtype=torch.int32)
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX, group=_host_group())
    return bool(value.numpy()[0])  # a CPU tensor: reading it never waits for the device


def release_process_group() -> None:
    """Destroy the process group (and DeepSpeed's references to it); a later run starts a new one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        # deepspeed started the group, so it is imported already; it must forget its cached groups too.
        import deepspeed.comm

        deepspeed.comm.destroy_process_group()
    _HOST_GROUP.clear()


@contextlib.contextmanager
def launcher_env_scope() -> Iterator[None]:
    """Undo what a run started in this process: the launcher variables :func:`init_distributed` exported
    are restored (no stale ``MASTER_PORT`` for child processes to inherit), and a process group the run
    started is released when it ends normally, so an in-process caller (a notebook, a test, the demo
    fine-tuning after distilling) is not left inside a one-process "distributed" job."""
    saved = {key: os.environ.get(key) for key in _LAUNCH_VARS}
    started_here = not (torch.distributed.is_available() and torch.distributed.is_initialized())
    try:
        yield
        if started_here:
            release_process_group()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
