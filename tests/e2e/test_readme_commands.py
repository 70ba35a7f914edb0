"""README.md's command table, run as a new user would: in a fresh folder, row after row, each command on
the outputs of the rows before it, on the embedded assets and without a hub.

The commands are read from README.md (so the test stays true to the page) and run in this process through
the two tools' entry points, made small by the options below, which are appended to the command as
written (a later option or override wins over the page's): a few steps, a few sentences. The row that
needs four GPUs (torchrun) is not run.
"""

from __future__ import annotations

import glob
import re
import shlex
from pathlib import Path

import pytest

from finetune import cli as finetune_cli
from pretrain_distill import cli as distill_cli
from pretrain_distill.core.assets import wikipedia_dump_path

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
TOOLS = {"pretrain-distill": distill_cli.main, "finetune": finetune_cli.main}
FINETUNE_SMALL = ["--seeds", "1", "--max-train-samples", "32", "--max-eval-samples", "16", "--epochs", "1"]
#: (tool, command) -> what is appended to make the README's command small.
SMALLER = {
    ("pretrain-distill", "train"): [
        "train.max_steps=2",
        "train.micro_batch_size=4",
        "train.eval_every=2",  # the held-out split of the prepare row is evaluated
        "train.eval_batches=1",
        "data.num_workers=0",
    ],
    ("pretrain-distill", "fit-mlm-head"): ["--steps", "2", "--batch-size", "4"],
    ("pretrain-distill", "latency"): ["--warmup", "0", "--repeats", "2"],
    ("pretrain-distill", "search"): [
        "--candidates",
        "2,12,384,1536",
        "--steps",
        "2",
        "--batch",
        "4",
        "--val-batches",
        "1",
        "--latency-warmup",
        "0",
        "--latency-repeats",
        "2",
    ],  # fmt: skip
    ("finetune", "train"): [*FINETUNE_SMALL, "--max-length", "32"],
    ("finetune", "distill"): [*FINETUNE_SMALL, "--max-length", "32"],
}
NOT_RUN = ("torchrun",)  # four GPUs


def readme_commands() -> list[str]:
    """The first command of each row of README.md's pipeline table, in order."""
    text = (REPO / "README.md").read_text()
    table = text[text.index("| stage | command | docs |") :].split("\n\n")[0].splitlines()[2:]
    return [re.search(r"`([^`]+)`", row.split("|")[2]).group(1) for row in table]


def test_the_table_names_every_stage_of_the_pipeline():
    tools = [shlex.split(c)[:2] for c in readme_commands() if not c.startswith(NOT_RUN)]
    assert [t for t, _ in tools] == ["pretrain-distill"] * 9 + ["finetune"] * 4
    assert {c for _, c in tools} == set(distill_cli.COMMANDS) - {"config", "demo"} | set(
        finetune_cli.COMMANDS
    ) - {"sweep"}


def test_readme_commands_run_in_order_on_each_others_outputs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").symlink_to(REPO / "configs")  # the README runs from the repository root
    ran = []
    for command in readme_commands():
        if command.startswith(NOT_RUN):
            continue
        command = command.replace("wikipedia:DUMP.xml.bz2", f"wikipedia:{wikipedia_dump_path()}")
        tool, name, *args = shlex.split(command)
        args = [a for arg in args for a in (sorted(glob.glob(arg)) if "*" in arg else [arg])]
        code = TOOLS[tool]([name, *args, *SMALLER.get((tool, name), [])])
        out, err = capsys.readouterr()
        assert code == 0, f"{command}\n{err[-3000:]}"
        ran.append((tool, name, out))

    assert len(ran) == 13
    export = dict(((t, n), out) for t, n, out in ran)[("pretrain-distill", "export")]
    assert export == "runs/distill/export\n"  # stdout: the result only ($(pretrain-distill export ...))
    assert (tmp_path / "runs" / "distill" / "plots" / "losses.png").is_file()
    assert (tmp_path / "runs" / "search" / "search.md").is_file()
    savings = dict(((t, n), out) for t, n, out in ran)[("pretrain-distill", "vocab")]
    assert "| 3, 12, 384, 1024 | full (30,522) | 16.06M | 64.2 MB |" in savings
    rows = (tmp_path / "reports" / "report.md").read_text()
    for model in ("minilm", "distill", "distill-rail_c"):  # named after the models, not "export"
        assert f"| {model} |" in rows, rows
