"""Single-process training through the engine (in-process): objectives lower their loss, the run
directory, export, plots, multi-stage init_from, preemption, non-finite losses, mid-write crashes, config
errors."""

from __future__ import annotations

import math
import os
import signal

import pytest
import torch
from engine_helpers import tiny_config, tiny_overrides
from safetensors.torch import load_file

from pretrain_distill import cli
from pretrain_distill.core.checkpoint_trust import read_metadata
from pretrain_distill.core.metrics_log import MetricsLogger, read_metrics
from pretrain_distill.engine import EXIT_PREEMPTED, NonFiniteLossError, Preempted, train
from pretrain_distill.engine.checkpoint import CheckpointStore
from pretrain_distill.export import end_of_run


def _losses(run_dir, key="loss"):
    return [(r["step"], r[key]) for r in read_metrics(run_dir / "logs" / "metrics.jsonl")]


@pytest.fixture(scope="module")
def hs_run(tiny_teacher_dir, tiny_shards, tmp_path_factory):
    """One finished HS run (6 steps, checkpoints at 3 and 6) shared by the layout / export tests."""
    return train(
        tiny_config(tiny_teacher_dir, tiny_shards, tmp_path_factory.mktemp("hs") / "run"), on_end=end_of_run
    )


@pytest.mark.parametrize(
    "objective",
    [
        ["objective.weights={hs: 1.0}", "objective.mapping=uniform"],
        ["objective.weights={minilmv2: 1.0}", "objective.teacher_layer=L_T-1", "objective.relation_heads=2"],
    ],
    ids=["hs", "minilmv2"],
)
def test_objective_lowers_its_loss_on_a_fixed_batch(objective, tiny_teacher_dir, one_batch_shards, tmp_path):
    cfg = tiny_config(
        tiny_teacher_dir,
        one_batch_shards,
        tmp_path / "run",
        *objective,
        "train.max_steps=12",
        "train.save_every=100",
        "train.lr=3e-3",
        "train.export=false",
    )
    losses = [loss for _, loss in _losses(train(cfg))]
    assert len(losses) == 12
    assert losses[-1] < 0.7 * losses[0], losses


def test_run_directory_layout(hs_run):
    assert (hs_run / "config.yaml").is_file() and (hs_run / "tokenizer" / "tokenizer.json").is_file()
    store = CheckpointStore(hs_run / "checkpoints", keep_last=3)
    assert [s for s, _ in store.complete()] == [3, 6]
    meta = read_metadata(store.latest())
    assert meta["state"]["step"] == 6 and meta["world_size"] == 1
    assert set(meta["state"]["last_losses"]) == {"loss", "loss_hs"}
    records = read_metrics(hs_run / "logs" / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    for key in ("loss", "loss_hs", "lr", "grad_norm", "tokens_per_s", "loader_wait_s", "cpu_rss_gb"):
        assert all(isinstance(r[key], float) for r in records), key
    assert all(math.isfinite(r["grad_norm"]) and r["grad_norm"] > 0 for r in records)
    assert records[0]["lr"] > records[-1]["lr"] > 0  # decaying after the 1-step warmup
    assert list((hs_run / "logs" / "tensorboard").glob("events.out.tfevents.*"))


def test_keep_last_prunes_old_checkpoints(tiny_teacher_dir, tiny_shards, tmp_path):
    cfg = tiny_config(
        tiny_teacher_dir,
        tiny_shards,
        tmp_path / "run",
        "train.save_every=1",
        "train.keep_last=2",
        "train.max_steps=4",
        "train.export=false",
    )
    run_dir = train(cfg)
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("step_*")) == [
        "step_00000003",
        "step_00000004",
    ]


def test_export_loads_with_automodel_and_has_a_model_card(hs_run, tiny_teacher_dir, tmp_path):
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(hs_run / "export")
    assert model.config.num_hidden_layers == 2 and model.config.hidden_size == 32
    trained = load_file(CheckpointStore(hs_run / "checkpoints", 1).latest() / "student" / "model.safetensors")
    for name, value in model.state_dict().items():
        if f"bert.{name}" in trained:
            torch.testing.assert_close(value, trained[f"bert.{name}"])
    assert AutoTokenizer.from_pretrained(hs_run / "export").mask_token == "[MASK]"
    card = (hs_run / "export" / "README.md").read_text()
    for needle in (
        f"**Teacher (base model)**: `{tiny_teacher_dir.name}`",  # its folder: no local path published
        "hs x 1",
        "layer mapping `uniform`",
        "6 optimizer steps",
        "loss_hs",
    ):
        assert needle in card, needle
    # the CLI writes the same directory elsewhere, from an explicit checkpoint
    out = tmp_path / "exported"
    assert (
        cli.main(
            [
                "export",
                str(hs_run),
                "--checkpoint",
                str(hs_run / "checkpoints" / "step_00000003"),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert AutoModel.from_pretrained(out).config.hidden_size == 32
    assert "3 optimizer steps" in (out / "README.md").read_text()


def test_plot_command_on_a_run(hs_run):
    assert cli.main(["plot", str(hs_run)]) == 0
    assert (hs_run / "plots" / "losses.png").stat().st_size > 1000


def test_od_stage_starts_from_the_hs_checkpoint(hs_run, tiny_teacher_dir, tiny_shards, tmp_path):
    """Multi-stage: OD (teacher with an MLM head, masked batches) initialised from the HS run."""
    cfg = tiny_config(
        tiny_teacher_dir,
        tiny_shards,
        tmp_path / "od",
        "objective.weights={od: 1.0}",
        f"student.init_from={hs_run}",
        "train.lr=0.0",
        "train.max_steps=2",
        "train.save_every=100",
    )
    od_run = train(cfg, on_end=end_of_run)
    losses = _losses(od_run, "loss_od")
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(v)) for _, v in losses)
    # with LR 0 the OD student is exactly the HS student it started from (OD's export adds the MLM head)
    hs = load_file(hs_run / "export" / "model.safetensors")
    od = load_file(od_run / "export" / "model.safetensors")
    assert set(hs) == {k.removeprefix("bert.") for k in od if k.startswith("bert.")}
    assert any(k.startswith("cls.") for k in od) and not any(k.startswith("cls.") for k in hs)
    for name in hs:
        torch.testing.assert_close(od[f"bert.{name}"], hs[name], rtol=0, atol=0, msg=name)


def test_init_from_not_found_is_a_config_error(tiny_teacher_dir, tiny_shards, tmp_path, capsys):
    args = [
        "train",
        *tiny_overrides(tiny_teacher_dir, tiny_shards, tmp_path / "run"),
        f"student.init_from={tmp_path / 'nowhere'}",
    ]
    assert cli.main(args) == 2
    assert "student.init_from" in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra, message",
    [
        (
            ["train.deepspeed={json}"],
            "train_micro_batch_size_per_gpu=16 disagrees with train.micro_batch_size=4",
        ),
        (["data.shards={tmp}/no_shards"], "no_shards"),
        (["train.resume={tmp}"], "not a complete checkpoint"),
        (["train.precision=fp16"], "fp16 is not supported on CPU"),
        (["train.bogus=1"], "unknown config key train.bogus"),
    ],
    ids=["batch-disagreement", "missing-shards", "bad-resume", "fp16-cpu", "unknown-key"],
)
def test_config_errors_exit_2_with_a_message(extra, message, tiny_teacher_dir, tiny_shards, tmp_path, capsys):
    ds_json = tmp_path / "ds.json"
    ds_json.write_text('{"train_micro_batch_size_per_gpu": 16, "zero_optimization": {"stage": 2}}')
    extra = [e.format(json=ds_json, tmp=tmp_path) for e in extra]
    code = cli.main(["train", *tiny_overrides(tiny_teacher_dir, tiny_shards, tmp_path / "run"), *extra])
    assert code == 2
    assert message in capsys.readouterr().err


def test_sigterm_saves_a_checkpoint_and_exits_75(tiny_teacher_dir, tiny_shards, tmp_path, monkeypatch):
    original = MetricsLogger.log

    def log_then_signal(self, step, metrics):
        original(self, step, metrics)
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # as SLURM does on preemption

    monkeypatch.setattr(MetricsLogger, "log", log_then_signal)
    overrides = tiny_overrides(tiny_teacher_dir, tiny_shards, tmp_path / "run", "train.save_every=100")
    assert cli.main(["train", *overrides]) == EXIT_PREEMPTED
    store = CheckpointStore(tmp_path / "run" / "checkpoints", 3)
    assert [s for s, _ in store.complete()] == [3]  # saved at the end of the step the signal arrived in
    assert not (tmp_path / "run" / "export").exists()
    monkeypatch.setattr(MetricsLogger, "log", original)
    assert cli.main(["train", *overrides]) == 0  # the requeued job continues to the end
    assert [s for s, _ in _losses(tmp_path / "run")] == [1, 2, 3, 4, 5, 6]


def test_preempted_is_raised_by_the_python_api(tiny_teacher_dir, tiny_shards, tmp_path, monkeypatch):
    original = MetricsLogger.log

    def log_then_signal(self, step, metrics):
        original(self, step, metrics)
        if step == 1:
            os.kill(os.getpid(), signal.SIGUSR1)

    monkeypatch.setattr(MetricsLogger, "log", log_then_signal)
    with pytest.raises(Preempted, match="SIGUSR1") as info:
        train(tiny_config(tiny_teacher_dir, tiny_shards, tmp_path / "run"))
    assert info.value.checkpoint.name == "step_00000002"


def _poison(monkeypatch, at_step: int) -> None:
    """Make the loss NaN on the micro-batch of optimizer step ``at_step`` (1-based)."""
    from pretrain_distill.objectives import Distiller

    original = Distiller.forward

    def forward(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        if self.step == at_step - 1 and not getattr(self, "_poisoned", False):
            self._poisoned = True
            out = {k: v * float("nan") for k, v in out.items()}
        return out

    monkeypatch.setattr(Distiller, "forward", forward)


def test_non_finite_loss_stops_naming_step_and_terms(tiny_teacher_dir, tiny_shards, tmp_path, monkeypatch):
    _poison(monkeypatch, at_step=3)
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at step 3 .*hs=nan"):
        train(tiny_config(tiny_teacher_dir, tiny_shards, tmp_path / "run", "train.save_every=100"))


def test_non_finite_skip_budget(tiny_teacher_dir, tiny_shards, tmp_path, monkeypatch):
    _poison(monkeypatch, at_step=3)
    cfg = tiny_config(tiny_teacher_dir, tiny_shards, tmp_path / "run", "train.nan_skip_budget=1")
    with pytest.warns(UserWarning, match="non-finite loss at step 3"):
        run_dir = train(cfg)
    meta = read_metadata(CheckpointStore(run_dir / "checkpoints", 1).latest())
    assert meta["state"]["step"] == 6 and meta["state"]["nan_skipped"] == 1
    assert meta["state"]["micro_step"] == 7  # the skipped micro-batch was replaced by the next one
    assert all(torch.isfinite(torch.tensor(v)) for _, v in _losses(run_dir))


def test_crash_while_writing_a_checkpoint_leaves_the_previous_one(
    tiny_teacher_dir, tiny_shards, tmp_path, monkeypatch
):
    import pretrain_distill.engine.state as state_module

    original = state_module.save_config

    def crash_at_step_6(cfg, path):
        if "step_00000006" in str(path):
            raise OSError("simulated crash in the middle of writing a checkpoint")
        return original(cfg, path)

    monkeypatch.setattr(state_module, "save_config", crash_at_step_6)
    cfg = tiny_config(tiny_teacher_dir, tiny_shards, tmp_path / "run", "train.export=false")
    with pytest.raises(OSError, match="simulated crash"):
        train(cfg)
    checkpoints = tmp_path / "run" / "checkpoints"
    assert (checkpoints / ".tmp-step_00000006" / "student").is_dir()  # half written
    assert not (checkpoints / "step_00000006").exists()
    assert CheckpointStore(checkpoints, 3).latest().name == "step_00000003"
    monkeypatch.setattr(state_module, "save_config", original)
    train(cfg)  # resume=auto continues from step 3
    assert sorted(p.name for p in checkpoints.iterdir() if p.name.startswith(("step_", ".tmp"))) == [
        "step_00000003",
        "step_00000006",
    ]
    assert [s for s, _ in _losses(tmp_path / "run")] == [1, 2, 3, 4, 5, 6]


def test_train_help_lists_launch_commands(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    text = capsys.readouterr().out
    for needle in (
        "torchrun --standalone --nproc_per_node",
        "deepspeed --num_gpus",
        "sbatch --nodes=4 slurm/distill.sbatch",
        "--rdzv_endpoint=$HEAD:29500 -m pretrain_distill.cli train",
        "minilm_3l_minilmv2.yaml train.max_steps=200",
    ):
        assert needle in text


def test_shards_from_another_tokenizer_are_refused():
    from pretrain_distill.core.errors import ConfigError
    from pretrain_distill.data.manifest import check_tokenizer

    class Tok:
        cls_token_id, sep_token_id, pad_token_id, mask_token_id = 101, 102, 0, 103

        def __len__(self):
            return 30522

    good = {"name": "bert", "vocab_size": 30522, "cls_id": 101, "sep_id": 102, "pad_id": 0, "mask_id": 103}
    check_tokenizer({"tokenizer": good}, Tok())
    roberta = {**good, "name": "roberta", "vocab_size": 50265, "mask_id": 50264}
    with pytest.raises(ConfigError, match="vocab_size: shards 50265, run 30522.*mask_id"):
        check_tokenizer({"tokenizer": roberta}, Tok())


def test_an_in_process_run_leaves_no_process_group_behind(tiny_teacher_dir, tiny_shards, tmp_path, caplog):
    """`make demo` fine-tunes in the process that distilled: the HF Trainer warned "torch.distributed process
    group is initialized, but parallel_mode != ParallelMode.DISTRIBUTED" because the run left its group up."""
    from transformers import TrainingArguments

    from pretrain_distill.core.distributed import release_process_group

    release_process_group()  # as in a fresh process (earlier tests here drive the Trainer directly)
    first = tiny_config(
        tiny_teacher_dir, tiny_shards, tmp_path / "a", "train.max_steps=2", "train.export=false"
    )
    train(first)
    assert not torch.distributed.is_initialized()
    with caplog.at_level("WARNING"):
        TrainingArguments(output_dir=str(tmp_path / "ft"), use_cpu=True, report_to="none")
    assert "parallel_mode" not in caplog.text
    second = tiny_config(
        tiny_teacher_dir, tiny_shards, tmp_path / "b", "train.max_steps=2", "train.export=false"
    )
    assert _losses(train(second)) == _losses(tmp_path / "a")  # a second run in the process starts afresh
