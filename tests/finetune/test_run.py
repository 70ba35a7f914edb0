"""End-to-end jobs on tiny models and fixture data: run directories, reproducible metrics, selection,
distillation, sweeps, out-of-domain sets, config errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from task_metrics import compute_metrics
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from finetune.cli import main
from finetune.finetune_config import ConfigError, EvalSetConfig, FinetuneConfig, load_finetune_config
from finetune.hf_trainer import fit, trainer_arguments
from finetune.jobs import run
from finetune.objectives import FinetuneObjective
from finetune.tasks import load_task_data
from finetune.tokenization import encode

from .conftest import tiny_classifier

FAST = ["--max-steps", "3", "--max-length", "32", "--no-progress", "batch_size=4", "lr=1e-3"]


def quick_config(model_dir, data_dir, output_dir, **fields) -> FinetuneConfig:
    """A few-step, no-progress, no-save run of ``model_dir`` on the fixture data (``fields`` override)."""
    defaults = dict(seeds=[1], max_steps=2, max_length=32, batch_size=4, progress=False, save_model=False)
    return FinetuneConfig(
        model=str(model_dir), data_dir=str(data_dir), output_dir=str(output_dir), **(defaults | fields)
    )


def test_train_cli_writes_runs_that_reproduce_their_metrics(tmp_path, glue_dir, tiny_encoder_dir):
    root, _ = glue_dir
    out = tmp_path / "runs"
    argv = ["train", "--model", str(tiny_encoder_dir), "--task", "sst2", "--seeds", "1", "2"]
    argv += ["--data-dir", str(root), "--output-dir", str(out), "--select", "last", *FAST]
    assert main(argv) == 0
    for seed in (1, 2):
        run_dir = out / "sst2" / tiny_encoder_dir.name / f"seed{seed}"
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert metrics["seed"] == seed and metrics["steps"] == 3 and metrics["method"] == "finetune"
        assert set(metrics["eval"]["dev"]) == {"accuracy"} and 0 <= metrics["scores"]["dev"] <= 1
        cfg = load_finetune_config([str(run_dir / "config.yaml")])
        assert cfg.seeds == [seed] and cfg.task == "sst2" and cfg.max_steps == 3
        # the saved model reproduces the reported dev metrics
        model = AutoModelForSequenceClassification.from_pretrained(run_dir / "model").eval()
        tok = AutoTokenizer.from_pretrained(run_dir / "model")
        dev = load_task_data(cfg).evals["dev"]
        batch = tok(list(dev["text_a"]), truncation=True, max_length=32, padding=True, return_tensors="pt")
        with torch.no_grad():
            logits = model(**batch).logits.numpy()
        assert compute_metrics("sst2", logits, np.array(dev["label"])) == pytest.approx(
            metrics["eval"]["dev"]
        )


@pytest.mark.parametrize("task, splits", [("stsb", {"dev"}), ("mnli", {"dev_matched", "dev_mismatched"})])
def test_regression_and_two_dev_sets(tmp_path, glue_dir, tiny_encoder_dir, task, splits):
    root, _ = glue_dir
    cfg = quick_config(tiny_encoder_dir, root, tmp_path, task=task, seeds=[3])
    (run_dir,) = run(cfg)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics["eval"]) == splits
    if task == "stsb":
        assert set(metrics["eval"]["dev"]) == {"pearson", "spearman"}
    assert not (run_dir / "model").exists()


def test_xnli_selects_on_english_dev_and_scores_all_languages(tmp_path, glue_dir, tiny_encoder_dir):
    root, _ = glue_dir
    cfg = quick_config(tiny_encoder_dir, root, tmp_path, task="xnli")
    metrics = json.loads((run(cfg)[0] / "metrics.json").read_text())
    assert len(metrics["scores"]) == 30 and "test.sw" in metrics["scores"]
    assert load_task_data(cfg).spec.selection_split == "dev.en"


def test_best_epoch_is_restored(tokenizer, tmp_path):
    """select=best keeps the weights of the evaluation with the best selection score, select=last the
    last; the history has one record per epoch and checkpoints are made at every evaluation."""
    from datasets import Dataset

    ds = encode(
        Dataset.from_dict({"text_a": ["a b", "c d", "e f", "g h"], "label": [0, 1, 0, 1]}), tokenizer, 16
    )
    for select, keep in (("best", 1), ("last", 2)):
        obj = FinetuneObjective(tiny_classifier(1, 32, vocab_size=30522))
        snapshots, scores = [], iter([0.2, 0.9, 0.1])

        def metrics(prediction, obj=obj, snapshots=snapshots, scores=scores):
            snapshots.append({k: v.clone() for k, v in obj.state_dict().items()})
            return {"accuracy": 0.5, "score": next(scores)}

        cfg = FinetuneConfig(
            select=select, lr=1e-2, batch_size=2, progress=False, device="cpu", num_workers=0
        )
        run_dir = tmp_path / select
        args = trainer_arguments(cfg, run_dir, seed=1, epochs=3, selection_split="dev")
        result, _ = fit(obj, ds, {"dev": ds}, tokenizer, cfg, args, run_dir, metrics)
        assert [r["step"] for r in result.history] == [2, 4, 6]
        assert [r["scores"]["dev"] for r in result.history] == [0.2, 0.9, 0.1]
        assert result.selected_epoch == (keep + 1 if select == "best" else 3)
        expected = snapshots[keep]
        assert all(torch.equal(v, expected[k]) for k, v in obj.state_dict().items())
        assert not all(torch.equal(v, snapshots[0][k]) for k, v in expected.items())
        assert (run_dir / "checkpoints" / "checkpoint-4").is_dir()  # the best one is kept


@pytest.mark.parametrize("method", ["vanilla", "ild_rtc"])
def test_distill_cli(tmp_path, glue_dir, tiny_encoder_dir, tiny_teacher_dir, method):
    root, _ = glue_dir
    out = tmp_path / "kd"
    argv = [
        "distill",
        "--teacher",
        str(tiny_teacher_dir),
        "--student",
        str(tiny_encoder_dir),
        "--task",
        "sst2",
    ]
    argv += ["--method", method, "--seeds", "1", "--data-dir", str(root), "--output-dir", str(out), *FAST]
    assert main(argv) == 0
    run_dir = out / "sst2" / f"{tiny_encoder_dir.name}-{method}" / "seed1"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["method"] == method and metrics["teacher"] == str(tiny_teacher_dir)
    assert {"ce", "kd", "loss"} <= set(metrics["history"][0]["train"])
    if method == "ild_rtc":  # same width: student = teacher's first 2 layers + the teacher's classifier
        student = AutoModelForSequenceClassification.from_pretrained(run_dir / "model")
        teacher = AutoModelForSequenceClassification.from_pretrained(tiny_teacher_dir)
        assert torch.equal(student.classifier.weight, teacher.classifier.weight)
        assert torch.equal(student.bert.pooler.dense.weight, teacher.bert.pooler.dense.weight)
        assert "layer" in metrics["history"][0]["train"]


def test_out_of_domain_eval_set(tmp_path, glue_dir, tiny_encoder_dir):
    root, _ = glue_dir
    (tmp_path / "imdb.csv").write_text("text,label\ngreat fun,pos\nawful bore,neg\ngood,pos\n")
    ood = EvalSetConfig(
        name="imdb",
        file=str(tmp_path / "imdb.csv"),
        text_column="text",
        label_map={"pos": "positive", "neg": "negative"},
    )
    cfg = quick_config(
        tiny_encoder_dir, root, tmp_path, task="sst2", max_steps=1, max_length=16, eval_sets=[ood]
    )
    metrics = json.loads((run(cfg)[0] / "metrics.json").read_text())
    assert metrics["ood"]["imdb"]["accuracy"] in (0.0, 1 / 3, 2 / 3, 1.0)


def test_sweep_lists_counts_and_runs_one_index(tmp_path, glue_dir, tiny_encoder_dir, capsys):
    root, _ = glue_dir
    base = ["sweep", "--model", str(tiny_encoder_dir), "--tasks", "rte", "wnli", "--seeds", "1", "2"]
    assert main([*base, "--count"]) == 0
    assert capsys.readouterr().out.strip() == "4"
    assert main([*base, "--list"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split("\t")[1:3] for line in lines] == [
        ["rte", "seed=1"],
        ["rte", "seed=2"],
        ["wnli", "seed=1"],
        ["wnli", "seed=2"],
    ]
    assert main([*base, "--index", "2", "--data-dir", str(root), "--output-dir", str(tmp_path), *FAST]) == 0
    assert [p.parent.parent.name + "/" + p.parent.name for p in tmp_path.rglob("metrics.json")] == [
        f"{tiny_encoder_dir.name}/seed1"
    ]
    assert (tmp_path / "wnli").is_dir() and not (tmp_path / "rte").exists()


def test_config_errors():
    with pytest.raises(ConfigError, match="did you mean lr"):
        load_finetune_config(overrides=["lrr=1e-3"])
    with pytest.raises(ConfigError, match="epochs: must be > 0, got -1"):
        load_finetune_config(overrides=["epochs=-1"])
    with pytest.raises(ConfigError, match="distill.method: expected one of"):
        load_finetune_config(overrides=["distill.method=tinybert"])
    with pytest.raises(ConfigError, match="model: model directory not found"):
        from pretrain_distill.core.model_names import find_model

        find_model("./no/such/model", "model")


def test_runs_are_named_after_the_model_not_its_export_folder():
    """Every distillation run exports to <run>/export: rows and run directories take the run's name."""
    from finetune.jobs import model_name, run_name

    assert [model_name(m) for m in ("runs/hs/export", "runs/hs/export/", "runs/my_student", "minilm")] == [
        "hs",
        "hs",
        "my_student",
        "minilm",
    ]
    cfg = load_finetune_config(
        overrides=["model=runs/rail/export", "distill.teacher=t", "distill.method=rail_c"]
    )
    assert run_name(cfg) == "rail-rail_c"


def test_prediction_map_merges_classes():
    from finetune.jobs import merge_predictions
    from finetune.tasks import get_task

    merged = merge_predictions(np.array([0, 1, 2, 2, 0]), get_task("mnli"), {"contradiction": "neutral"})
    assert merged.tolist() == [0, 1, 1, 1, 0]  # SciTail: entails / neutral


def test_shipped_configs_validate():
    from pathlib import Path

    files = sorted(Path(__file__).resolve().parents[2].glob("configs/finetune/*.yaml"))
    assert len(files) >= 10
    methods = {load_finetune_config([str(f)]).distill.method for f in files}
    assert methods == {"vanilla", "pkd", "rail_l", "rail_c", "ild_rtc"}
    ood = load_finetune_config(["finetune/ood_mnli_scitail"])
    assert ood.task == "mnli" and ood.eval_sets[0].prediction_map == {"contradiction": "neutral"}


@pytest.mark.slow
def test_deepspeed_wrapped_training_single_process(tmp_path, glue_dir, tiny_encoder_dir, capsys):
    """--deepspeed wraps the module with deepspeed.initialize (ZeRO-0 JSON, one CPU process)."""
    root, _ = glue_dir
    out = tmp_path / "ds"
    argv = [
        "train",
        "--model",
        str(tiny_encoder_dir),
        "--task",
        "sst2",
        "--seeds",
        "1",
        "--data-dir",
        str(root),
    ]
    argv += ["--output-dir", str(out), "--deepspeed", "deepspeed/zero0.json", *FAST]
    assert main(argv) == 0
    metrics = json.loads(next(out.rglob("metrics.json")).read_text())
    assert metrics["steps"] == 3 and np.isfinite(metrics["history"][0]["train"]["loss"])
    assert main([*argv[: -len(FAST)], "--deepspeed", "deepspeed/zero3.json", *FAST]) == 2
    assert "ZeRO stages 0-2" in capsys.readouterr().err


def test_classifier_from_an_mlm_export_keeps_the_encoder(tmp_path, tokenizer):
    from transformers import BertConfig, BertForMaskedLM

    from finetune.modeling import load_classifier
    from finetune.tasks import get_task

    config = BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64
    )
    mlm = BertForMaskedLM(config)
    mlm.save_pretrained(tmp_path)
    model = load_classifier(str(tmp_path), get_task("mnli"))
    assert model.config.num_labels == 3 and model.config.id2label[2] == "contradiction"
    assert torch.equal(
        model.bert.embeddings.word_embeddings.weight, mlm.bert.embeddings.word_embeddings.weight
    )
    with pytest.raises(ValueError, match="classifier with 3 labels, task sst2 has 2"):
        model.save_pretrained(tmp_path / "clf")
        load_classifier(str(tmp_path / "clf"), get_task("sst2"))


def test_flags_become_typed_overrides():
    from finetune import cli
    from finetune.commands.job_options import job_config
    from pretrain_distill.core.command_line import parse

    argv = ["train", "--model", "runs/yes", "--seeds", "4", "5", "--max-steps", "7", "--run-name", "null"]
    _, args = parse("finetune", "", cli.COMMANDS, [*argv, "--no-progress"])
    cfg = job_config(args)
    assert (cfg.model, cfg.seeds, cfg.max_steps, cfg.run_name, cfg.progress) == (
        "runs/yes",
        [4, 5],
        7,
        "null",
        False,
    )
