"""Starting the child processes of multi-process tests: a free port, a clean environment, a torchrun
command line."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def subprocess_env(**extra: str) -> dict[str, str]:
    """Environment for child processes: one thread each, no launcher variables inherited."""
    env = {
        k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")
    }
    env.update(
        OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu", PYTHONPATH=str(REPO), TOKENIZERS_PARALLELISM="false"
    )
    env.update(extra)
    return env


def torchrun(*args: str, nproc: int = 2) -> list[str]:
    """``python -m torch.distributed.run`` with ``nproc`` local ranks on a free port, then ``args``."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={nproc}",
        "--master_addr=127.0.0.1",
        f"--master_port={free_port()}",
        *args,
    ]
