"""Both console scripts: every subcommand has a --help that explains it; a mistake is one line on stderr
and exit 2 (1 for a run-time failure), with suggestions; overrides go anywhere; --version."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from finetune import cli as finetune_cli
from pretrain_distill import cli as distill_cli

REPO = Path(__file__).resolve().parents[2]
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


def test_a_stopped_run_is_one_line_and_its_exit_code(capsys):
    """A preemption (RunStopped) ends train, search and demo alike: one line, exit 75 (scripts too)."""
    from pretrain_distill.core.command_line import run_script
    from pretrain_distill.core.errors import RunStopped

    def preempted():
        raise RunStopped("SIGTERM received: saved runs/x/checkpoints/step_00000002; rerun the same command")

    assert run_script(preempted, "pretrain-distill demo") == 75
    err = capsys.readouterr().err
    assert (
        err
        == "pretrain-distill demo: SIGTERM received: saved runs/x/checkpoints/step_00000002; rerun the same command\n"
    )


def test_a_bad_asset_path_in_the_environment_is_a_mistake(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("DISTILL_TEACHER", str(tmp_path / "nowhere"))
    assert distill_cli.main(["assets", "--only", "teacher"]) == 2
    captured = capsys.readouterr()
    assert captured.err == (
        f"pretrain-distill assets: error: teacher: $DISTILL_TEACHER points to {tmp_path / 'nowhere'}, "
        "which does not exist (teacher model directory)\n"
    )
    assert "MISSING" in captured.out  # the table still says what was found


@pytest.mark.parametrize("module", [distill_cli, finetune_cli])
def test_help_examples_keep_their_line_continuations(module):
    """A ``\\`` at the end of a docstring line must reach --help (a single one joins the lines)."""
    import importlib

    for name, (module_name, _) in module.COMMANDS.items():
        command = importlib.import_module(module_name)
        source = Path(command.__file__).read_text()
        raw = source[source.index('"""') + 3 : source.index('"""', source.index('"""') + 3)]
        assert command.__doc__.count("\n") == raw.count("\n"), f"{name}: a line continuation was swallowed"


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


# ---------------------------------------------------------------------------------------- failing cleanly

# (tool, argv with {tmp} for the test's directory, exit code, part of the message) -- a typical mistake each
MISTAKES = (
    [
        (distill_cli, ["assets", "--only", "nosuch"], 2, "invalid choice: 'nosuch'"),
        (distill_cli, ["prepare", "--source", "nosuch:/x", "--out", "{tmp}/shards"], 2, "expected KIND:PATH"),
        (distill_cli, ["config", "train.lrr=1"], 2, "unknown config key train.lrr (did you mean train.lr?)"),
        (distill_cli, ["train", "nothere.yaml"], 2, "config file not found: nothere.yaml"),
        (distill_cli, ["train", "--train.lr"], 2, "override --train.lr has no value"),
        (distill_cli, ["fit-mlm-head", "--shards", "{tmp}/none", "--out", "{tmp}/head"], 2, "no manifest"),
        (distill_cli, ["export", "{tmp}/nowhere"], 2, "no such run directory"),
        (
            distill_cli,
            ["export", "{tmp}", "--ot", "x"],
            2,
            "unrecognized arguments: --ot (did you mean --out?)",
        ),
        (distill_cli, ["plot", "{tmp}/nowhere"], 2, "no such run directory"),
        (
            distill_cli,
            ["demo", "--objectives", "od", "--out", "{tmp}/demo"],
            2,
            "list an HS objective before it",
        ),
        (distill_cli, ["trian"], 2, "unknown command 'trian' (did you mean train?)"),
        (finetune_cli, ["train", "lr=fast"], 2, "lr: expected a number, got 'fast'"),
        (finetune_cli, ["train", "--modle", "x"], 2, "unknown config key modle (did you mean model?)"),
        (finetune_cli, ["train", "--epochs", "many"], 2, "argument --epochs: invalid float value"),
        (
            finetune_cli,
            ["sweep", "--index", "9", "--tasks", "cola", "--seeds", "1"],
            2,
            "--index 9 out of range",
        ),
        (finetune_cli, ["distill", "--task", "sst2"], 2, "give the fine-tuned teacher"),
        (finetune_cli, ["report", "{tmp}/nothing"], 2, "no such run directory or file"),
        (finetune_cli, ["sweeep"], 2, "unknown command 'sweeep' (did you mean sweep?)"),
        # a misspelt option is named before argparse's "arguments are required" could hide it
        (
            distill_cli,
            ["prepare", "--sorce", "x"],
            2,
            "unrecognized arguments: --sorce (did you mean --source?)",
        ),
    ]
    + [  # a run this machine cannot do is refused before any work
        case
        for case in [
            (
                distill_cli,
                ["demo", "--device", "cuda", "--out", "{tmp}/demo"],
                2,
                "--device cuda: this machine",
            ),
            (
                distill_cli,
                ["search", "--teacher", "minilm", "--shards", "{tmp}/shards", "--candidates", "3L"]
                + ["--steps", "1", "--device", "cuda", "--out", "{tmp}/search"],
                2,
                "--device cuda: this machine has no",
            ),
            (
                finetune_cli,
                [
                    "train",
                    "--model",
                    "minilm",
                    "--task",
                    "movies",
                    "--device",
                    "cuda",
                    "--output-dir",
                    "{tmp}/ft",
                ],
                2,
                "device cuda: this machine has no",
            ),
        ]
        if not torch.cuda.is_available()
    ]
    + [  # and an unknown option on every command (or first: a missing required argument)
        (cli, [name, "--no-such-option"], 2, "error: ") for cli, name in CASES
    ]
)


@pytest.mark.parametrize(
    ("cli", "argv", "code", "message"),
    MISTAKES,
    ids=[f"{c.__name__.split('.')[0]}:{' '.join(a)}" for c, a, _, _ in MISTAKES],
)
def test_a_mistake_is_one_line_and_exit_2_and_writes_nothing(
    cli, argv, code, message, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)  # default output directories are relative: they would show up here
    assert cli.main([a.format(tmp=tmp_path) for a in argv]) == code
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert message in err, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith(("pretrain-distill", "finetune")), err
    assert not list(tmp_path.iterdir()), "nothing may be written before the inputs are checked"


def test_run_time_failure_is_one_line_exit_1_and_debug_shows_the_traceback(tmp_path, monkeypatch, capsys):
    from pretrain_distill.commands import plot

    def boom(run_dir):
        raise RuntimeError("disk on fire\nsecond line")

    monkeypatch.setattr(plot, "plot_run", boom)
    assert distill_cli.main(["plot", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err == (
        "pretrain-distill plot: error: RuntimeError: disk on fire second line "
        "(--debug or DISTILL_DEBUG=1 for the traceback)"
    )
    assert distill_cli.main(["plot", str(tmp_path), "--debug"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].endswith(
        "RuntimeError: disk on fire second line"
    )
    monkeypatch.setenv("DISTILL_DEBUG", "1")
    assert finetune_cli.main(["report", str(tmp_path / "none")]) == 2
    assert "Traceback" in capsys.readouterr().err


@pytest.mark.parametrize("cli", [distill_cli, finetune_cli])
def test_version(cli, capsys):
    from pretrain_distill import __version__

    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip().endswith(__version__)


# ------------------------------------------------------------------------------- overrides in any position

MINILM = "configs/experiments/minilm_3l_minilmv2.yaml"


@pytest.mark.parametrize(
    "argv",
    [
        ["config", MINILM, "train.lr=3e-4", "--student.preset", "6L"],
        ["config", "--train.lr", "3e-4", MINILM, "student.preset=6L"],
        ["config", "student.preset=6L", "--config", MINILM, "--train.lr=3e-4"],
        ["config", "--config=" + MINILM, "--student.preset=6L", "train.lr=3e-4"],
    ],
    ids=["file-first", "override-before-file", "config-option", "equals-forms"],
)
def test_overrides_and_files_in_any_order(argv, capsys):
    assert distill_cli.main(["config", MINILM, "train.lr=3e-4", "student.preset=6L"]) == 0
    expected = capsys.readouterr().out
    assert distill_cli.main(argv) == 0
    assert capsys.readouterr().out == expected
    assert "lr: 0.0003" in expected and "preset: 6L" in expected


def _finetune_config(argv):
    from finetune.commands.job_options import job_config
    from pretrain_distill import __version__
    from pretrain_distill.core.command_line import parse

    _, args = parse("finetune", "", finetune_cli.COMMANDS, argv, __version__)
    return args, job_config(args)


def test_finetune_sweep_takes_a_leading_override():
    """The issue's example: `finetune sweep --lr 3e-5` read 3e-5 as a config file."""
    args, cfg = _finetune_config(["sweep", "--lr", "3e-5", "--tasks", "cola", "sst2", "--list"])
    assert cfg.lr == pytest.approx(3e-5) and args.tasks == ["cola", "sst2"] and args.list


def test_option_values_are_not_taken_for_overrides():
    args, cfg = _finetune_config(["train", "--run-name", "a=b", "--seeds", "4", "5", "batch_size=8"])
    assert (cfg.run_name, cfg.seeds, cfg.batch_size) == ("a=b", [4, 5], 8)


def test_launcher_local_rank_argument_is_dropped_in_both_spellings():
    from pretrain_distill.core.command_line import without_local_rank

    assert without_local_rank(["--local_rank=1", "a.b=1", "--local-rank", "2", "--x.y", "3"]) == [
        "a.b=1",
        "--x.y",
        "3",
    ]


@pytest.mark.parametrize(
    "argv",
    [
        ["--local_rank=1", "sweep", "--lr", "3e-5", "--tasks", "cola", "--seeds", "1", "--count"],
        ["sweep", "--lr", "3e-5", "--local_rank", "0", "--tasks", "cola", "--seeds", "1", "--count"],
        ["sweep", "--tasks", "cola", "--seeds", "1", "--count", "--local-rank=3"],
    ],
)
def test_deepspeed_launchers_local_rank_is_accepted_anywhere_by_finetune(argv, capsys):
    """`deepspeed --module finetune.cli ...` adds --local_rank=N to every worker's arguments."""
    assert finetune_cli.main(argv) == 0
    assert capsys.readouterr().out.strip() == "1"


def test_deepspeed_launchers_local_rank_never_reaches_pretrain_distill_overrides(capsys):
    assert distill_cli.main(["--local_rank=1", "config", "--local_rank", "1", "train.max_steps=7"]) == 0
    assert "max_steps: 7" in capsys.readouterr().out


def test_finetune_sweep_lr_runs_from_the_console(capsys):
    assert finetune_cli.main(["sweep", "--lr", "3e-5", "--tasks", "cola", "--seeds", "1", "--count"]) == 0
    assert capsys.readouterr().out.strip() == "1"


@pytest.mark.parametrize(
    ("module", "argv", "message"),
    [
        ("pretrain_distill.cli", ["train", "nothere.yaml"], "config file not found"),
        ("finetune.cli", ["sweep", "--lr"], "override --lr has no value"),
    ],
)
def test_console_failure_is_one_line_on_stderr(module, argv, message, tmp_path):
    """The whole process, imports included: one line, exit 2."""
    proc = subprocess.run(
        [sys.executable, "-m", module, *argv],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
        timeout=120,
    )
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and message in proc.stderr, proc.stderr
