"""One job = one task x one model x seeds: load data once, train each seed, write its run directory.

Run directory ``output_dir/<task>/<run_name>/seed<k>/``: ``metrics.json`` (scores per evaluation split
and epoch), ``config.yaml`` (the resolved config, seeds narrowed to this one), ``model/`` (Hugging
Face directory with tokenizer). Distillation when ``cfg.distill.teacher`` is set.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import datasets
import numpy as np
from transformers import set_seed

from finetune.config import FinetuneConfig
from finetune.data import encode, limit, make_loader
from finetune.kd import FinetuneObjective, TaskDistiller
from finetune.loop import fit, predict
from finetune.metrics import metric_values, task_score
from finetune.modeling import init_from_teacher_layers, load_classifier, load_tokenizer
from finetune.tasks import TaskData, TaskSpec, load_eval_set, load_task_data
from pretrain_distill.configuration import save_config
from pretrain_distill.engine.distributed import detect_env, resolve_device


def default_epochs(spec: TaskSpec, multilingual: bool) -> float:
    """The paper's protocol (Appendix D): 3 epochs, CoLA 6 (10 multilingual), XNLI 5."""
    return 10.0 if spec.name == "cola" and multilingual else spec.epochs


def run_name(cfg: FinetuneConfig) -> str:
    name = cfg.run_name or Path(cfg.model.rstrip("/")).name
    return name if cfg.run_name or not cfg.distill.teacher else f"{name}-{cfg.distill.method}"


def build_objective(cfg: FinetuneConfig, spec: TaskSpec, seed: int):
    """Plain fine-tuning objective, or the task distiller (student = ``cfg.model``)."""
    student = load_classifier(cfg.model, spec)
    if not cfg.distill.teacher:
        return FinetuneObjective(student)
    teacher = load_classifier(cfg.distill.teacher, spec)
    init = cfg.distill.student_init
    if init == "auto":
        same_width = student.config.hidden_size == teacher.config.hidden_size
        same_type = student.config.model_type == teacher.config.model_type
        init = (
            "teacher_layers" if cfg.distill.method == "ild_rtc" and same_width and same_type else "pretrained"
        )
    if init == "teacher_layers":
        init_from_teacher_layers(student, teacher)
    return TaskDistiller(cfg.distill, student, teacher, seed=seed)


def evaluate_splits(objective, loaders: dict, spec: TaskSpec, device) -> dict[str, dict[str, float]]:
    """Official metrics of every evaluation split."""
    out = {}
    for name, loader in loaders.items():
        logits, labels = predict(objective, loader, device)
        out[name] = metric_values(spec.metrics, logits, labels, spec.is_regression)
    return out


def evaluate_ood(
    objective, cfg: FinetuneConfig, spec: TaskSpec, tokenizer, device
) -> dict[str, dict[str, float]]:
    """Accuracy on each out-of-domain set, predictions merged by its ``prediction_map``."""
    out = {}
    for ood in cfg.eval_sets:
        ds = limit(load_eval_set(ood, spec, cfg.data_dir), cfg.max_eval_samples)
        loader = make_loader(encode(ds, tokenizer, cfg.max_length), tokenizer, cfg.eval_batch_size, False)
        logits, labels = predict(objective, loader, device)
        predictions = merge_predictions(logits.argmax(-1), spec, ood.prediction_map)
        out[ood.name] = metric_values(("accuracy",), predictions, labels, regression=False)
    return out


def merge_predictions(predictions: np.ndarray, spec: TaskSpec, prediction_map: dict[str, str]) -> np.ndarray:
    """Class ids with each ``prediction_map`` source label replaced by its target (by label name)."""
    merge = np.arange(spec.num_labels)
    for src, dst in prediction_map.items():
        merge[spec.labels.index(src)] = spec.labels.index(dst)
    return merge[predictions]


def run_seed(cfg: FinetuneConfig, data: TaskData, seed: int) -> Path:
    """Train and evaluate one seed; returns its run directory."""
    spec = data.spec
    run_dir = Path(cfg.output_dir) / spec.name / run_name(cfg) / f"seed{seed}"
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(dataclasses.replace(cfg, seeds=[seed]), run_dir / "config.yaml")
    set_seed(seed)
    if not cfg.progress:
        datasets.disable_progress_bars()
    device = resolve_device(cfg.device, detect_env().local_rank)
    tokenizer = load_tokenizer(cfg.tokenizer or cfg.model)
    train = encode(limit(data.train, cfg.max_train_samples, seed), tokenizer, cfg.max_length)
    train_loader = make_loader(train, tokenizer, cfg.batch_size, shuffle=True, seed=seed)
    eval_loaders = {
        name: make_loader(
            encode(limit(ds, cfg.max_eval_samples), tokenizer, cfg.max_length),
            tokenizer,
            cfg.eval_batch_size,
            False,
        )
        for name, ds in data.evals.items()
    }
    objective = build_objective(cfg, spec, seed)

    def scores() -> dict[str, float]:
        return {k: task_score(v) for k, v in evaluate_splits(objective, eval_loaders, spec, device).items()}

    start = time.time()
    epochs = cfg.epochs or default_epochs(spec, cfg.multilingual)
    result = fit(objective, train_loader, scores, cfg, epochs, device, spec.selection_split)
    seconds = time.time() - start
    metrics = {
        "task": spec.name,
        "run_name": run_name(cfg),
        "model": cfg.model,
        "method": cfg.distill.method if cfg.distill.teacher else "finetune",
        "teacher": cfg.distill.teacher or None,
        "seed": seed,
        "metric_names": list(spec.metrics),
        "select": cfg.select,
        "selected_epoch": result.selected_epoch,
        "steps": result.steps,
        "train_examples": len(train),
        "train_seconds": round(seconds, 2),
        "eval": evaluate_splits(objective, eval_loaders, spec, device),
        "ood": evaluate_ood(objective, cfg, spec, tokenizer, device),
        "history": result.history,
    }
    metrics["scores"] = {k: task_score(v) for k, v in metrics["eval"].items()}
    if cfg.save_model:
        objective.export().save_pretrained(run_dir / "model")  # load_classifier reads it back
        tokenizer.save_pretrained(run_dir / "model")
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return run_dir


def run(cfg: FinetuneConfig) -> list[Path]:
    """Every seed of ``cfg`` (data loaded once); returns the run directories."""
    data = load_task_data(cfg)
    return [run_seed(cfg, data, seed) for seed in cfg.seeds]


__all__ = ["build_objective", "default_epochs", "merge_predictions", "run", "run_name", "run_seed"]
