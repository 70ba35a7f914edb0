"""Every subcommand of both console scripts has a --help that explains it."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from finetune import cli as finetune_cli
from pretrain_distill import cli as distill_cli

CASES = [(distill_cli, name) for name in distill_cli.COMMANDS] + [
    (finetune_cli, name) for name in finetune_cli.COMMANDS
]


@pytest.mark.parametrize(("cli", "command"), CASES, ids=[f"{c.__name__}:{n}" for c, n in CASES])
def test_subcommand_help(cli, command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert f" {command}" in out.splitlines()[0]  # usage: prog COMMAND ...
    assert len(out.splitlines()) > 5, "help should explain the command, not only list flags"


@pytest.mark.parametrize("cli", [distill_cli, finetune_cli])
def test_top_level_help_lists_every_command(cli, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for name in cli.COMMANDS:
        assert name in out


def test_no_command_prints_help_and_fails(capsys):
    assert distill_cli.main([]) == 2
    assert "COMMAND" in capsys.readouterr().out


def test_config_command_prints_resolved_overrides(capsys):
    assert distill_cli.main(["config", "train.lr=3e-4", "--student.preset", "6L"]) == 0
    out = capsys.readouterr().out
    assert "lr: 0.0003" in out and "preset: 6L" in out


def test_console_scripts_installed():
    exe = shutil.which("pretrain-distill") or shutil.which("pretrain-distill", path=str(sys.prefix) + "/bin")
    if exe is None:
        pytest.skip("package not installed as a distribution (pip install -e .)")
    proc = subprocess.run([exe, "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "prepare" in proc.stdout
