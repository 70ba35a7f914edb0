"""Launcher detection: torchrun / deepspeed, SLURM srun, and no launcher."""

from __future__ import annotations

import pytest
import torch

from pretrain_distill.core.distributed import detect_env, first_slurm_host, resolve_device
from pretrain_distill.core.errors import ConfigError


def test_torchrun_variables_win():
    env = detect_env(
        {
            "RANK": "3",
            "WORLD_SIZE": "8",
            "LOCAL_RANK": "1",
            "MASTER_ADDR": "n1",
            "MASTER_PORT": "1234",
            "SLURM_PROCID": "0",
            "SLURM_NTASKS": "1",
        }
    )
    assert (env.rank, env.world_size, env.local_rank, env.master_addr, env.master_port) == (
        3,
        8,
        1,
        "n1",
        1234,
    )
    assert env.launcher == "torchrun" and not env.is_main


def test_slurm_variables():
    env = detect_env(
        {
            "SLURM_PROCID": "5",
            "SLURM_NTASKS": "16",
            "SLURM_LOCALID": "1",
            "SLURM_JOB_NODELIST": "gpu[007-008,012]",
            "SLURM_JOB_ID": "123456",
        }
    )
    assert (env.rank, env.world_size, env.local_rank) == (5, 16, 1)
    assert env.master_addr == "gpu007"
    assert env.master_port == 29500 + 123456 % 10000
    assert env.launcher == "slurm"


def test_slurm_respects_exported_master():
    env = detect_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "2", "MASTER_ADDR": "head", "MASTER_PORT": "4000"})
    assert (env.master_addr, env.master_port) == ("head", 4000)


def test_no_launcher_is_single_process_with_a_port():
    env = detect_env({})
    assert (env.rank, env.world_size, env.local_rank, env.launcher) == (0, 1, 0, "none")
    assert env.is_main and 0 < env.master_port < 65536


@pytest.mark.parametrize(
    "nodelist, host",
    [("node1", "node1"), ("gpu[003-005,009]", "gpu003"), ("a[1,3],b2", "a1"), ("c-01,c-02", "c-01")],
)
def test_first_slurm_host(nodelist, host):
    assert first_slurm_host(nodelist) == host


def test_resolve_device():
    assert resolve_device("cpu", 0) == torch.device("cpu")
    if not torch.cuda.is_available():
        assert resolve_device("auto", 0) == torch.device("cpu")
        with pytest.raises(ConfigError, match="no visible CUDA device"):
            resolve_device("cuda", 0)


def test_launcher_env_scope_restores_the_variables(monkeypatch):
    import os

    from pretrain_distill.core.distributed import init_distributed, launcher_env_scope

    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("MASTER_PORT", raising=False)
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    with launcher_env_scope():
        init_distributed(detect_env({}), torch.device("cpu"))
        assert (
            torch.distributed.is_initialized() and os.environ["RANK"] == "0" and "MASTER_PORT" in os.environ
        )
    assert "RANK" not in os.environ and "MASTER_PORT" not in os.environ
    assert os.environ["MASTER_ADDR"] == "127.0.0.1"
