"""Fine-tuning as users run it: 2 CPU ranks under torchrun (gloo) see every training example once per
epoch, end with identical weights and match a 1-rank run with the same global batch; a SIGKILLed run
resumes to the uninterrupted run's losses; gradient accumulation equals the full batch; bf16 runs;
bad inputs fail before anything is written. Tiny models (2 layers, 32 wide), 24 examples."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from finetune.finetune_config import ConfigError, load_finetune_config
from finetune.jobs import run
from finetune.model_card import model_card
from pretrain_distill.core.metrics_log import read_metrics
from pretrain_distill.core.public_paths import public_text
from pretrain_distill.core.run_lock import OutputDirInUseError
from tests.launch import REPO, free_port, subprocess_env, torchrun

from .conftest import sentence, tiny_classifier

N_TRAIN, GLOBAL_BATCH, EPOCHS = 24, 4, 2

# Child-script lines: after fitting, each rank saves the objective's final weights to
# <output_dir>/weights_rank<r>.pt (the script defines `cfg` and `rank`).
DUMP_FINAL_WEIGHTS = """
fit = runner.fit
def fit_and_dump(module, *args, **kwargs):
    result = fit(module, *args, **kwargs)
    torch.save(module.state_dict(), f"{cfg.output_dir}/weights_rank{rank}.pt")
    return result
runner.fit = fit_and_dump
"""

# Records, per rank, the example ids of every training batch (the id is the text's second word) and
# dumps the objective's final weights.
RECORDING_WORKER = (
    """
import json, os, sys, torch
import finetune.jobs as runner
from finetune.finetune_config import load_finetune_config
from finetune.objectives import FinetuneObjective
from transformers import AutoTokenizer

cfg = load_finetune_config(overrides=json.loads(sys.argv[1]))
tokenizer = AutoTokenizer.from_pretrained(cfg.model)
rank, seen = int(os.environ.get("RANK", 0)), []
forward = FinetuneObjective.forward
def recording(self, batch):
    if self.training:
        texts = tokenizer.batch_decode(batch["input_ids"], skip_special_tokens=True)
        seen.append([int(t.split()[1]) for t in texts])
    return forward(self, batch)
FinetuneObjective.forward = recording
"""
    + DUMP_FINAL_WEIGHTS
    + """
runner.run(cfg)
with open(f"{cfg.output_dir}/seen_rank{rank}.json", "w") as f:
    json.dump(seen, f)
"""
)

KILL_AFTER_STEP = """
import json, os, signal, sys
from finetune.finetune_config import load_finetune_config
from finetune.hf_trainer import MetricsCallback
from finetune.jobs import run
on_log = MetricsCallback.on_log
def log_then_die(self, args, state, control, logs=None, **kwargs):
    on_log(self, args, state, control, logs=logs, **kwargs)
    if state.global_step == int(sys.argv[2]) and "loss" in (logs or {}):
        os.kill(os.getpid(), signal.SIGKILL)
MetricsCallback.on_log = log_then_die
run(load_finetune_config(overrides=json.loads(sys.argv[1])))
"""


@pytest.fixture(scope="module")
def task_files(tmp_path_factory) -> dict[str, Path]:
    """A custom CSV task: 24 training and 8 dev sentences, 'item <id> ...', label id % 2."""
    root = tmp_path_factory.mktemp("task")
    for split, n, off in (("train", N_TRAIN, 0), ("dev", 8, 100)):
        rows = [f"item {off + i} {sentence(off + i, 4)},{(off + i) % 2}" for i in range(n)]
        (root / f"{split}.csv").write_text("text,label\n" + "\n".join(rows) + "\n")
    return {"train": root / "train.csv", "dev": root / "dev.csv"}


@pytest.fixture(scope="module")
def no_dropout_encoder(tmp_path_factory, tokenizer) -> Path:
    """A 2-layer, 32-wide encoder without dropout: runs differ only by summation order."""
    model = tiny_classifier(2, 32, head=False)
    model.config.hidden_dropout_prob = model.config.attention_probs_dropout_prob = 0.0
    path = tmp_path_factory.mktemp("no_dropout")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def overrides(model: Path, files: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return [
        f"model={model}",
        "task=custom",
        "custom.name=items",
        f"custom.train_file={files['train']}",
        f"custom.eval_files={{dev: {files['dev']}}}",
        "custom.text_column=text",
        f"output_dir={out}",
        "seeds=[1]",
        f"batch_size={GLOBAL_BATCH}",
        f"epochs={EPOCHS}",
        "lr=1e-3",
        "warmup_ratio=0.0",
        "max_length=16",
        "num_workers=2",
        "log_every=1",
        "device=cpu",
        "progress=false",
        *extra,
    ]


def step_losses(run_dir: Path) -> dict[int, float]:
    return {e["step"]: e["loss"] for e in read_metrics(run_dir / "logs" / "metrics.jsonl") if "loss" in e}


def run_dir_of(out: Path, model: Path) -> Path:
    return out / "items" / model.name / "seed1"


@pytest.mark.slow
def test_two_ranks_split_the_data_and_match_one_rank(tmp_path, task_files, no_dropout_encoder):
    """Tolerance: the 2-rank run's per-step losses, dev scores and final weights equal the 1-rank run's
    to 1e-5 (same global batch, same sample order; only summation order and per-rank padding differ)."""
    out2, out1 = tmp_path / "two", tmp_path / "one"
    out2.mkdir()
    script = tmp_path / "worker.py"
    script.write_text(RECORDING_WORKER)
    cmd = torchrun(str(script), json.dumps(overrides(no_dropout_encoder, task_files, out2, "select=last")))
    done = subprocess.run(cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-4000:]

    steps_per_epoch = N_TRAIN // GLOBAL_BATCH
    seen = [json.loads((out2 / f"seen_rank{r}.json").read_text()) for r in (0, 1)]
    assert [len(s) for s in seen] == [steps_per_epoch * EPOCHS] * 2
    assert all(len(batch) == GLOBAL_BATCH // 2 for s in seen for batch in s)
    orders = []
    for epoch in range(EPOCHS):
        window = slice(epoch * steps_per_epoch, (epoch + 1) * steps_per_epoch)
        ids = [i for s in seen for batch in s[window] for i in batch]
        assert sorted(ids) == list(range(N_TRAIN)), f"epoch {epoch}: {sorted(ids)}"  # each exactly once
        orders.append([i for b0, b1 in zip(seen[0][window], seen[1][window]) for i in b0 + b1])
    assert orders[0] != orders[1]  # reshuffled per epoch

    rank0, rank1 = (torch.load(out2 / f"weights_rank{r}.pt") for r in (0, 1))
    assert set(rank0) == set(rank1) and all(torch.equal(rank0[k], rank1[k]) for k in rank0)

    one = run(load_finetune_config(overrides=overrides(no_dropout_encoder, task_files, out1, "select=last")))
    two = run_dir_of(out2, no_dropout_encoder)
    assert one == [run_dir_of(out1, no_dropout_encoder)]
    m1, m2 = (json.loads((d / "metrics.json").read_text()) for d in (one[0], two))
    assert (m2["world_size"], m1["world_size"], m2["steps"]) == (2, 1, steps_per_epoch * EPOCHS)
    losses1, losses2 = step_losses(one[0]), step_losses(two)
    assert sorted(losses2) == list(range(1, steps_per_epoch * EPOCHS + 1))  # one line per step: rank 0 only
    torch.testing.assert_close(
        torch.tensor(list(losses2.values())), torch.tensor(list(losses1.values())), rtol=1e-5, atol=1e-6
    )
    assert m2["eval"]["dev"] == pytest.approx(m1["eval"]["dev"], abs=1e-5)
    for r1, r2 in zip(m1["history"], m2["history"]):
        assert r1["scores"] == pytest.approx(r2["scores"], abs=1e-5)
        assert r1["train"] == pytest.approx(r2["train"], rel=1e-5)
    w1, w2 = (load_file(d / "model" / "model.safetensors") for d in (one[0], two))
    for name in w1:
        torch.testing.assert_close(w2[name], w1[name], rtol=1e-5, atol=1e-5, msg=name)


@pytest.mark.slow
def test_sigkill_then_resume_reproduces_the_uninterrupted_losses(
    tmp_path, task_files, tiny_encoder_dir, capsys
):
    """Dropout on, 2 loader workers: resuming restores weights, optimizer, scheduler, RNG and the
    loader position (checkpoints every 2 steps and at each epoch end; killed after step 9 of 12)."""
    extra = ("save_every=2", "select=best")
    reference = run(
        load_finetune_config(overrides=overrides(tiny_encoder_dir, task_files, tmp_path / "ref", *extra))
    )[0]

    args = overrides(tiny_encoder_dir, task_files, tmp_path / "killed", *extra)
    killed = subprocess.run(
        [sys.executable, "-c", KILL_AFTER_STEP, json.dumps(args), "9"],
        cwd=REPO,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    run_dir = run_dir_of(tmp_path / "killed", tiny_encoder_dir)
    assert sorted(step_losses(run_dir)) == list(range(1, 10)) and not (run_dir / "metrics.json").exists()
    assert (run_dir / "checkpoints" / "checkpoint-8").is_dir()

    resumed = run(load_finetune_config(overrides=args))[0]  # resume: auto (default)
    want, got = step_losses(reference), step_losses(resumed)
    assert sorted(got) == list(range(1, 13))
    torch.testing.assert_close(
        torch.tensor(list(got.values())), torch.tensor(list(want.values())), rtol=1e-5, atol=0
    )
    m_ref, m_res = (json.loads((d / "metrics.json").read_text()) for d in (reference, resumed))
    assert m_res["eval"]["dev"] == pytest.approx(m_ref["eval"]["dev"])
    assert [r["step"] for r in m_res["history"]] == [6, 12] and m_res["selected_step"] == m_ref[
        "selected_step"
    ]

    log_before = (resumed / "logs" / "metrics.jsonl").read_text()
    assert run(load_finetune_config(overrides=args))[0] == resumed  # a finished run: nothing to redo
    assert (resumed / "logs" / "metrics.jsonl").read_text().startswith(log_before)
    assert json.loads((resumed / "metrics.json").read_text())["eval"] == m_res["eval"]
    config_before = (resumed / "config.yaml").read_text()
    with pytest.raises(ConfigError, match="holds checkpoints of an earlier run"):
        run(load_finetune_config(overrides=[*args, "resume=none", "lr=0.5"]))
    # resuming with another optimisation or training set would mix two runs into one result
    for change, named in (
        ("lr=0.5", "lr: 0.001 -> 0.5"),
        ("max_train_samples=8", "max_train_samples: null -> 8"),
    ):
        with pytest.raises(ConfigError, match=re.escape(f"holds checkpoints of another run ({named})")):
            run(load_finetune_config(overrides=[*args, change]))
    assert (resumed / "config.yaml").read_text() == config_before  # nothing written
    capsys.readouterr()
    run(load_finetune_config(overrides=[*args, "log_every=3", "eval_batch_size=7"]))  # these may change
    assert (
        f"{resumed}: resuming from checkpoint-12 (changed: eval_batch_size: 128 -> 7; log_every: 1 -> 3)"
        in capsys.readouterr().err
    )


def test_gradient_accumulation_equals_the_full_batch(tmp_path, task_files, no_dropout_encoder):
    runs = []
    for accum in (1, 2):
        args = overrides(no_dropout_encoder, task_files, tmp_path / f"acc{accum}", f"grad_accum={accum}")
        args += ["num_workers=0", "max_steps=3", "select=last"]
        runs.append(run(load_finetune_config(overrides=args))[0])
    w1, w2 = (load_file(d / "model" / "model.safetensors") for d in runs)
    for name in w1:
        torch.testing.assert_close(w2[name], w1[name], rtol=1e-5, atol=1e-5, msg=name)
    torch.testing.assert_close(
        torch.tensor(list(step_losses(runs[1]).values())),
        torch.tensor(list(step_losses(runs[0]).values())),
        rtol=1e-5,
        atol=1e-6,
    )
    with pytest.raises(ConfigError, match="does not split over 1 rank"):
        run(load_finetune_config(overrides=[*args, "grad_accum=3"]))


def test_bf16_eval_steps_logs_and_model_card(tmp_path, task_files, no_dropout_encoder, capsys, monkeypatch):
    """precision=bf16 trains under bf16 autocast; eval_every=3 adds a mid-epoch evaluation (a printed
    line, a history record, a checkpoint); TensorBoard events and the model card are written."""
    from finetune.objectives import FinetuneObjective

    autocast = []
    forward = FinetuneObjective.forward

    def recording(self, batch):
        autocast.append(
            torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
        )
        return forward(self, batch)

    monkeypatch.setattr(FinetuneObjective, "forward", recording)
    args = overrides(no_dropout_encoder, task_files, tmp_path, "precision=bf16", "num_workers=0", "epochs=1")
    (run_dir,) = run(load_finetune_config(overrides=[*args, "eval_every=3"]))
    assert len(autocast) == N_TRAIN // GLOBAL_BATCH and all(autocast)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert [r["step"] for r in metrics["history"]] == [3, 6]
    assert all(torch.isfinite(torch.tensor(v)) for v in step_losses(run_dir).values())
    printed = capsys.readouterr().out
    first, last = (r["scores"]["dev"] for r in metrics["history"])
    assert f"epoch 0.5 (step 3): accuracy {first:.4f}\n" in printed
    assert f"epoch 1: accuracy {last:.4f}\n" in printed
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["checkpoint-3", "checkpoint-6"]
    assert list((run_dir / "logs" / "tensorboard").glob("events.out.tfevents.*"))
    card = (run_dir / "model" / "README.md").read_text()
    assert f"base_model: {no_dropout_encoder.name}" in card and "seed: 1" in card  # its folder's name
    assert f"| dev | accuracy | {metrics['eval']['dev']['accuracy']:.4f} |" in card
    assert public_text(metrics["command"]) in card
    assert str(no_dropout_encoder.parent) not in card and str(tmp_path) not in card


def test_the_fine_tuning_card_names_paths_by_their_folder_unless_asked(tmp_path):
    metrics = {
        "method": "pkd",
        "teacher": str(tmp_path / "models" / "teacher-sst2"),
        "model": str(tmp_path / "runs" / "distill" / "export"),
        "run_name": "export-pkd",
        "task": "sst2",
        "seed": 1,
        "train_examples": 10,
        "steps": 3,
        "world_size": 1,
        "select": "last",
        "selected_epoch": 3,
        "selected_step": 3,
        "eval": {"dev": {"accuracy": 0.5}},
        "ood": {},
        "command": f"finetune distill --teacher {tmp_path}/models/teacher-sst2 --student {tmp_path}/runs/distill/export",
    }
    card = model_card(metrics, ("negative", "positive"))
    assert str(tmp_path) not in card
    assert "base_model: export" in card and "from `teacher-sst2`" in card
    assert "finetune distill --teacher teacher-sst2 --student export" in card
    full = model_card(metrics, ("negative", "positive"), full_paths=True)
    assert f"base_model: {tmp_path}/runs/distill/export" in full and metrics["command"] in full


def test_progress_bars_print_evaluation_lines_not_log_dicts(tmp_path, task_files, no_dropout_encoder, capsys):
    """With progress bars on, the console gets the bars and our evaluation lines; transformers' dict of
    every log (``{'loss': ...}``, ``{'eval_dev_accuracy': ...}``) stays in the JSON-lines log only."""
    args = overrides(no_dropout_encoder, task_files, tmp_path, "num_workers=0", "epochs=1", "progress=true")
    (run_dir,) = run(load_finetune_config(overrides=args))
    captured = capsys.readouterr()
    printed = captured.out + captured.err
    last = json.loads((run_dir / "metrics.json").read_text())["history"][-1]["scores"]["dev"]
    assert f"epoch 1: accuracy {last:.4f}" in printed and "it/s]" in printed  # a line and a bar
    assert "{'" not in printed and "'loss'" not in printed
    assert step_losses(run_dir)  # the per-step losses went to the log


def test_rail_layers_are_redrawn_per_epoch_also_after_a_resume():
    """The Trainer does not know RAIL-KD's per-epoch draw: the callback calls set_epoch(k) at the start
    of epoch k, also when a resume starts mid-epoch (state.epoch = 1.5 -> 1)."""
    from transformers import TrainerControl, TrainerState

    from finetune.hf_trainer import EvaluationFlow

    class Recorder(torch.nn.Module):
        epochs: list[int] = []

        def set_epoch(self, epoch: int) -> None:
            self.epochs.append(epoch)

    module = Recorder()
    flow = EvaluationFlow(module, eval_every=0)
    for epoch in (None, 1.0, 2.0, 1.5, 0.9999999):
        flow.on_epoch_begin(None, TrainerState(epoch=epoch), TrainerControl())
    assert module.epochs == [0, 1, 2, 1, 1]


@pytest.mark.parametrize(
    "problem, match",
    [
        ("model", "model: model directory not found"),
        ("column", "no column 'text'"),
        ("labels", "items/dev: label '7' does not occur in the training labels"),
    ],
)
def test_bad_inputs_fail_before_anything_is_written(tmp_path, task_files, no_dropout_encoder, problem, match):
    out = tmp_path / "out"
    args = overrides(no_dropout_encoder, task_files, out)
    if problem == "model":
        args.append(f"model={tmp_path / 'missing'}")
    elif problem == "column":
        (tmp_path / "train.csv").write_text("sentence,label\na b,0\nc d,1\n")
        args.append(f"custom.train_file={tmp_path / 'train.csv'}")
    else:
        (tmp_path / "dev.csv").write_text("text,label\na b,0\nc d,7\n")
        args.append(f"custom.eval_files={{dev: {tmp_path / 'dev.csv'}}}")
    with pytest.raises(ConfigError, match=match) as error:
        run(load_finetune_config(overrides=args))
    assert "\n" not in str(error.value)
    assert not out.exists()


@pytest.mark.slow
def test_task_distillation_on_two_ranks(tmp_path, glue_dir, tiny_encoder_dir, tiny_teacher_dir):
    """ILD-RTC through the CLI under torchrun: the student's own head gets no gradient (the teacher's
    classifier is reused), which DDP must be told; the frozen teacher follows the module's device."""
    root, _ = glue_dir
    out = tmp_path / "kd"
    cmd = torchrun("-m", "finetune.cli", "distill", "--method", "ild_rtc")
    cmd += ["--teacher", str(tiny_teacher_dir), "--student", str(tiny_encoder_dir), "--task", "sst2"]
    cmd += ["--seeds", "1", "--data-dir", str(root), "--output-dir", str(out), "--max-steps", "3"]
    cmd += ["--max-length", "32", "--no-progress", "batch_size=4", "lr=1e-3", "num_workers=0"]
    done = subprocess.run(cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-4000:]
    (metrics_file,) = out.rglob("metrics.json")
    metrics = json.loads(metrics_file.read_text())
    assert (metrics["method"], metrics["world_size"], metrics["steps"]) == ("ild_rtc", 2, 3)
    assert {"ce", "kd", "layer", "loss"} == set(metrics["history"][-1]["train"])
    assert done.stdout.count(f"{metrics_file.parent}\n") == 1  # the CLI's output: rank 0 only
    assert done.stdout.count("epoch 1: accuracy") == 1  # 12 examples, global batch 4: printed by rank 0 only


def test_a_checkpoint_or_log_line_cut_short_by_a_kill_is_skipped(tmp_path):
    """A checkpoint is complete once its COMPLETE marker is written (after every rank's files): a folder
    without one is incomplete. A log line torn by the kill is dropped when the resumed run trims the log
    to its checkpoint."""
    from transformers import TrainerControl, TrainerState

    from finetune.hf_trainer import MetricsCallback, resume_checkpoint
    from pretrain_distill.core.checkpoint_trust import mark_complete

    out = tmp_path / "checkpoints"
    assert resume_checkpoint(out, resume="auto") is None
    for step, complete in ((4, True), (10, True), (12, False)):
        (out / f"checkpoint-{step}").mkdir(parents=True)
        (out / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
        if complete:
            mark_complete(out / f"checkpoint-{step}", {"step": step})
    assert resume_checkpoint(out, resume="auto") == str(out / "checkpoint-10")  # 10 > 4 numerically
    with pytest.raises(ConfigError, match="holds checkpoints of an earlier run"):
        resume_checkpoint(out, resume="none")

    log = tmp_path / "logs" / "metrics.jsonl"
    log.parent.mkdir()
    log.write_text(
        "".join(json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in range(1, 13)) + '{"step": 1'
    )
    callback = MetricsCallback(log.parent, [], "run", {})
    callback.on_train_begin(None, TrainerState(global_step=10), TrainerControl())
    callback.on_train_end(None, TrainerState(global_step=10), TrainerControl())
    assert [e["step"] for e in read_metrics(log)] == list(range(1, 11))


def test_a_damaged_finetune_checkpoint_is_skipped_for_the_newest_that_verifies(tmp_path, caplog):
    """Fine-tuning checkpoints are trusted like the engine's: sizes and SHA-256 in the COMPLETE marker."""
    from finetune.hf_trainer import resume_checkpoint
    from pretrain_distill.core.checkpoint_trust import mark_complete

    out = tmp_path / "checkpoints"
    for step in (4, 10):
        folder = out / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        (folder / "model.safetensors").write_bytes(bytes(range(64)) * step)
        mark_complete(folder, {"step": step})
    (out / "checkpoint-10" / "model.safetensors").write_bytes(bytes(64 * 10))  # same size, other bytes
    assert resume_checkpoint(out, resume="auto") == str(out / "checkpoint-4")
    assert "checkpoint-10" in caplog.text and "checksum differs" in caplog.text
    (out / "checkpoint-4" / "model.safetensors").write_bytes(b"cut")
    with pytest.raises(ConfigError, match="no checkpoint passes its checks"):
        resume_checkpoint(out, resume="auto")


# One torchrun launch, several jobs (the process group is shared): per job and rank, the example ids of
# every training batch, RAIL-KD's teacher layers at every step, the size of every scored evaluation, and
# the objective's final weights. select=best is scripted: the second evaluation scores best.
COVERAGE_WORKER = (
    """
import json, os, sys, torch
import finetune.jobs as runner
from finetune.finetune_config import load_finetune_config
from finetune.objectives import FinetuneObjective, TaskDistiller
from transformers import AutoTokenizer

rank, record = int(os.environ["RANK"]), {}
def training_ids(batch):
    texts = tokenizer.batch_decode(batch["input_ids"], skip_special_tokens=True)
    return [int(t.split()[1]) for t in texts]
for cls in (FinetuneObjective, TaskDistiller):
    def recording(self, batch, _forward=cls.forward):
        if self.training:
            record["seen"].append(training_ids(batch))
            record["layers"].append(list(getattr(self, "teacher_layers", [])))
        return _forward(self, batch)
    cls.forward = recording
split_metrics = runner.split_metrics
def scripted(spec):
    compute, scores = split_metrics(spec), iter([0.2, 0.9, 0.1, 0.0])
    def scored(prediction):
        record["scored"].append(len(prediction.label_ids))
        return compute(prediction) | {"score": next(scores)}
    return scored
runner.split_metrics = scripted
"""
    + DUMP_FINAL_WEIGHTS
    + """
for overrides in json.loads(sys.argv[1]):
    cfg = load_finetune_config(overrides=overrides)
    tokenizer = AutoTokenizer.from_pretrained(cfg.model)
    record.update(seen=[], layers=[], scored=[])
    runner.run(cfg)
    with open(f"{cfg.output_dir}/record_rank{rank}.json", "w") as f:
        json.dump(record, f)
"""
)


@pytest.mark.slow
def test_two_ranks_uneven_data_best_selection_and_layer_kd(
    tmp_path, no_dropout_encoder, tiny_encoder_dir, tiny_teacher_dir
):
    """25 training examples in global batches of 4 on 2 ranks: each epoch trains every example once and
    3 twice (the last round completed from the epoch's start), which metrics.json counts as repeats; the
    9 dev examples are scored once each (not 10). ``select: best`` restores the same (best) weights on
    both ranks. PKD, RAIL-KD l and c train through the Trainer on 2 ranks: the same random teacher layers
    on both ranks in every step, identical weights at the end."""
    root = tmp_path / "task"
    for split, n, off in (("train", 25, 0), ("dev", 9, 100)):
        rows = [f"item {off + i} {sentence(off + i, 4)},{(off + i) % 2}" for i in range(n)]
        (root / f"{split}.csv").parent.mkdir(exist_ok=True)
        (root / f"{split}.csv").write_text("text,label\n" + "\n".join(rows) + "\n")
    files = {"train": root / "train.csv", "dev": root / "dev.csv"}
    best = overrides(no_dropout_encoder, files, tmp_path / "best", "epochs=3", "select=best", "num_workers=0")
    jobs = [best] + [
        overrides(tiny_encoder_dir, files, tmp_path / method, "epochs=2", "num_workers=0", "select=last")
        + [f"distill.teacher={tiny_teacher_dir}", f"distill.method={method}"]
        for method in ("pkd", "rail_l", "rail_c")
    ]
    script = tmp_path / "worker.py"
    script.write_text(COVERAGE_WORKER)
    cmd = torchrun(str(script), json.dumps(jobs))
    done = subprocess.run(cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]

    def outputs(out: Path):
        run_dir = next(out.rglob("metrics.json")).parent
        records = [json.loads((out / f"record_rank{r}.json").read_text()) for r in (0, 1)]
        weights = [torch.load(out / f"weights_rank{r}.pt") for r in (0, 1)]
        assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])  # ranks agree
        return json.loads((run_dir / "metrics.json").read_text()), records, weights[0], run_dir

    metrics, records, weights, run_dir = outputs(tmp_path / "best")
    steps = 7  # ceil(25 / 4) per epoch
    assert metrics["steps"] == 3 * steps and metrics["train_repeats_per_epoch"] == 3
    for epoch in range(3):
        ids = [i for r in records for batch in r["seen"][epoch * steps : (epoch + 1) * steps] for i in batch]
        assert len(ids) == 28 and sorted(set(ids)) == list(range(25))
        counts = Counter(ids)
        assert sorted(counts.values()) == [1] * 22 + [2] * 3  # 3 repeats, no example left out
    assert all(size == 9 for r in records for size in r["scored"])  # each dev example scored once
    assert metrics["eval"]["dev"]["accuracy"] * 9 == pytest.approx(
        round(metrics["eval"]["dev"]["accuracy"] * 9)
    )
    assert (metrics["selected_epoch"], metrics["selected_step"]) == (2, 2 * steps)
    kept = load_file(run_dir / "checkpoints" / f"checkpoint-{2 * steps}" / "model.safetensors")
    last = load_file(run_dir / "checkpoints" / f"checkpoint-{3 * steps}" / "model.safetensors")
    assert all(torch.equal(weights[k], kept[k]) for k in kept)  # the best, on both ranks
    assert not all(torch.equal(kept[k], last[k]) for k in kept)

    for method in ("pkd", "rail_l", "rail_c"):
        metrics, records, _, _ = outputs(tmp_path / method)
        assert (metrics["method"], metrics["world_size"], metrics["steps"]) == (method, 2, 2 * steps)
        assert {"ce", "kd", "layer", "loss"} == set(metrics["history"][-1]["train"])
        assert records[0]["layers"] == records[1]["layers"]  # the same teacher layers on both ranks
        if method != "pkd":  # one draw per epoch
            assert all(
                len({tuple(x) for x in records[0]["layers"][e * steps : (e + 1) * steps]}) == 1
                for e in (0, 1)
            )


# argv: JSON overrides, the rank to kill (-1: none), the step after whose log line it is killed
KILL_ONE_RANK = """
import json, os, signal, sys
from finetune import cli
from finetune.hf_trainer import MetricsCallback
victim, after = int(sys.argv[2]), int(sys.argv[3])
on_log = MetricsCallback.on_log
def log_then_die(self, args, state, control, logs=None, **kwargs):
    on_log(self, args, state, control, logs=logs, **kwargs)
    if state.global_step == after and "loss" in (logs or {}) and int(os.environ["RANK"]) == victim:
        os.kill(os.getpid(), signal.SIGKILL)  # kill -9
MetricsCallback.on_log = log_then_die
sys.exit(cli.main(["train", *json.loads(sys.argv[1])]))
"""


@pytest.mark.slow
def test_a_killed_rank_of_finetune_train_is_named_and_the_rerun_resumes_exactly(
    tmp_path, task_files, tiny_encoder_dir
):
    """2 ranks started as srun starts them (nobody tears the job down): rank 1 killed after step 5 of
    12; rank 0 stops within seconds naming it in one line; the rerun (torchrun) resumes from
    checkpoint-4 to the losses and weights of an uninterrupted 2-rank run (dropout on, 2 loader workers)."""
    script = tmp_path / "child.py"
    script.write_text(KILL_ONE_RANK)
    extra = ("save_every=2", "select=last")
    reference = overrides(tiny_encoder_dir, task_files, tmp_path / "reference", *extra)
    args = overrides(tiny_encoder_dir, task_files, tmp_path / "killed", *extra)

    def run_on_two_ranks(argv: list[str]) -> None:
        cmd = torchrun(str(script), json.dumps(argv), "-1", "0")
        done = subprocess.run(
            cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=400
        )
        assert done.returncode == 0, done.stderr[-4000:]

    run_on_two_ranks(reference)
    port = str(free_port())
    ranks = []
    for rank in (0, 1):
        env = subprocess_env() | {"SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank), "SLURM_NTASKS": "2"}
        env |= {"SLURM_JOB_NODELIST": "127.0.0.1", "MASTER_PORT": port, "DISTILL_RANK_TIMEOUT": "10"}
        cmd = [sys.executable, str(script), json.dumps(args), "1", "5"]
        ranks.append(subprocess.Popen(cmd, cwd=REPO, env=env, stderr=subprocess.PIPE, text=True))
    assert ranks[1].wait(timeout=400) == -signal.SIGKILL
    died = time.monotonic()
    err = ranks[0].communicate(timeout=120)[1]
    assert ranks[0].returncode == 1 and time.monotonic() - died < 20, err[-3000:]
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1 and re.search(r"RankLostError: rank 1 \(pid \d+ on [^)]+\) has died", lines[0]), (
        err
    )
    run_dir = run_dir_of(tmp_path / "killed", tiny_encoder_dir)
    assert (run_dir / "checkpoints" / "checkpoint-4").is_dir() and not (run_dir / "metrics.json").exists()

    run_on_two_ranks(args)
    want, got = step_losses(run_dir_of(tmp_path / "reference", tiny_encoder_dir)), step_losses(run_dir)
    assert sorted(got) == list(range(1, 13))
    torch.testing.assert_close(
        torch.tensor(list(got.values())), torch.tensor(list(want.values())), rtol=1e-5, atol=0
    )
    w_ref = load_file(run_dir_of(tmp_path / "reference", tiny_encoder_dir) / "model" / "model.safetensors")
    w_got = load_file(run_dir / "model" / "model.safetensors")
    for name in w_ref:
        torch.testing.assert_close(w_got[name], w_ref[name], rtol=1e-5, atol=1e-7, msg=name)


def test_a_second_fine_tuning_run_on_a_seed_dir_in_use_refuses(tmp_path, task_files, no_dropout_encoder):
    """Another live process holds the seed directory's lock: the run refuses in one line naming it
    before it writes anything there."""
    args = overrides(no_dropout_encoder, task_files, tmp_path, "num_workers=0", "max_steps=1")
    seed_dir = run_dir_of(tmp_path, no_dropout_encoder)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\nfrom pretrain_distill.core.run_lock import RunLock\n"
            f"lock = RunLock({str(seed_dir)!r}, 'fine-tuning run').acquire()\nprint('held', flush=True)\ntime.sleep(600)",
        ],
        cwd=REPO,
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(
            OutputDirInUseError, match=rf"in use by fine-tuning run pid {holder.pid} on host "
        ) as error:
            run(load_finetune_config(overrides=args))
        assert "\n" not in str(error.value)
        assert sorted(p.name for p in seed_dir.iterdir()) == [".lock"]
    finally:
        holder.kill()
        holder.wait()
    with pytest.warns(UserWarning, match=rf"taking over the lock left by fine-tuning run pid {holder.pid}"):
        run(load_finetune_config(overrides=args))  # its holder is gone
    assert (seed_dir / "metrics.json").is_file()
