"""One job = one task x one model x seeds: check the inputs, load data once, train each seed on the
Hugging Face ``Trainer`` (:mod:`finetune.loop`), write its run directory (rank 0 only).

Run directory ``output_dir/<task>/<run_name>/seed<k>/``: ``metrics.json`` (scores per evaluation split,
history of evaluations), ``config.yaml`` (the resolved config, seeds narrowed to this one), ``model/``
(Hugging Face directory with tokenizer and a model card ``README.md``), ``log.jsonl`` and
``tensorboard/`` (training logs), ``checkpoints/`` (for ``resume``). Distillation when
``cfg.distill.teacher`` is set. Every input is checked before anything is written.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path

import datasets
import numpy as np
from transformers import EvalPrediction, set_seed

from finetune.card import model_card
from finetune.config import RESUME_MAY_CHANGE, FinetuneConfig, FinetuneInputError
from finetune.data import encode, limit
from finetune.kd import FinetuneObjective, TaskDistiller
from finetune.loop import (
    CHECKPOINTS,
    deepspeed_config,
    export_launcher_env,
    fit,
    is_main_process,
    per_device_batch,
    predict,
    resume_checkpoint,
    uses_cpu,
    world_size,
)
from finetune.metrics import metric_values, task_score
from finetune.modeling import init_from_teacher_layers, load_classifier, load_tokenizer, resolve_model_path
from finetune.tasks import TaskData, TaskSpec, load_eval_set, load_task_data
from pretrain_distill.config_changes import config_changes, saved_config, under
from pretrain_distill.configuration import save_config, to_dict


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


def merge_predictions(predictions: np.ndarray, spec: TaskSpec, prediction_map: dict[str, str]) -> np.ndarray:
    """Class ids with each ``prediction_map`` source label replaced by its target (by label name)."""
    merge = np.arange(spec.num_labels)
    for src, dst in prediction_map.items():
        merge[spec.labels.index(src)] = spec.labels.index(dst)
    return merge[predictions]


def seed_dir(cfg: FinetuneConfig, spec: TaskSpec, seed: int) -> Path:
    """A seed's run directory: ``output_dir/<task>/<run_name>/seed<k>``."""
    return Path(cfg.output_dir) / spec.name / run_name(cfg) / f"seed{seed}"


def split_metrics(spec: TaskSpec) -> Callable[[EvalPrediction], dict[str, float]]:
    """The Trainer's ``compute_metrics``: the task's official metrics of a split plus its ``score``."""

    def compute(prediction: EvalPrediction) -> dict[str, float]:
        values = metric_values(spec.metrics, prediction.predictions, prediction.label_ids, spec.is_regression)
        return values | {"score": task_score(values)}

    return compute


def check_inputs(cfg: FinetuneConfig) -> None:
    """What can fail before training, checked before anything is written: the model, tokenizer and
    teacher directories, the DeepSpeed config, the global batch against the ranks (data: in
    :func:`load_inputs`)."""
    resolve_model_path(cfg.model, "model")
    if cfg.tokenizer:
        resolve_model_path(cfg.tokenizer, "tokenizer")
    if cfg.distill.teacher:
        resolve_model_path(cfg.distill.teacher, "distill.teacher")
    per_device_batch(cfg, world_size())
    deepspeed_config(cfg)
    uses_cpu(cfg)


def load_inputs(cfg: FinetuneConfig) -> tuple[TaskData, dict[str, datasets.Dataset]]:
    """The task's data and its out-of-domain sets by name (columns and labels checked)."""
    data = load_task_data(cfg)
    ood = {
        s.name: limit(load_eval_set(s, data.spec, cfg.data_dir), cfg.max_eval_samples) for s in cfg.eval_sets
    }
    return data, ood


def run_seed(cfg: FinetuneConfig, data: TaskData, seed: int, ood: dict[str, datasets.Dataset]) -> Path:
    """Train and evaluate one seed; returns its run directory (written by rank 0 only)."""
    spec = data.spec
    run_dir = seed_dir(cfg, spec, seed)
    if not cfg.progress:
        datasets.disable_progress_bars()
    set_seed(seed)
    tokenizer = load_tokenizer(cfg.tokenizer or cfg.model)
    train = encode(limit(data.train, cfg.max_train_samples, seed), tokenizer, cfg.max_length)
    evals = {
        k: encode(limit(ds, cfg.max_eval_samples), tokenizer, cfg.max_length) for k, ds in data.evals.items()
    }
    objective = build_objective(cfg, spec, seed)
    main = is_main_process()
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(dataclasses.replace(cfg, seeds=[seed]), run_dir / "config.yaml")
    start = time.time()
    epochs = cfg.epochs or default_epochs(spec, cfg.multilingual)
    result, trainer = fit(
        objective,
        train,
        evals,
        tokenizer,
        cfg,
        epochs,
        seed,
        run_dir,
        split_metrics(spec),
        spec.selection_split,
        find_unused_parameters=bool(cfg.distill.teacher) and cfg.distill.method == "ild_rtc",
    )
    seconds = time.time() - start

    def ood_accuracy(ds: datasets.Dataset, prediction_map: dict[str, str]) -> dict[str, float]:
        logits, labels = predict(trainer, encode(ds, tokenizer, cfg.max_length))
        predictions = merge_predictions(logits.argmax(-1), spec, prediction_map)
        return metric_values(("accuracy",), predictions, labels, regression=False)

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
        "selected_step": result.selected_step,
        "steps": result.steps,
        "world_size": world_size(),
        "train_examples": len(train),
        "train_seconds": round(seconds, 2),
        "eval": {
            k: metric_values(spec.metrics, *predict(trainer, ds), spec.is_regression)
            for k, ds in evals.items()
        },
        "ood": {s.name: ood_accuracy(ood[s.name], s.prediction_map) for s in cfg.eval_sets},
        "history": result.history,
        "command": shlex.join(sys.argv),
    }
    metrics["scores"] = {k: task_score(v) for k, v in metrics["eval"].items()}
    if main:
        if cfg.save_model:
            model_dir = run_dir / "model"
            objective.export().save_pretrained(model_dir)  # load_classifier reads it back
            tokenizer.save_pretrained(model_dir)
            (model_dir / "README.md").write_text(model_card(metrics, spec.labels))
        (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return run_dir


def check_resume(cfg: FinetuneConfig, run_dir: Path, seed: int) -> None:
    """A seed directory holding checkpoints continues only the run that wrote them: ``resume: false``
    is refused, and so is any change of a field outside ``RESUME_MAY_CHANGE`` (one line naming each);
    a resume is announced on stderr with the fields that did change."""
    checkpoint = resume_checkpoint(run_dir / CHECKPOINTS, cfg.resume)
    if checkpoint is None:
        return
    current = to_dict(dataclasses.replace(cfg, seeds=[seed]))
    may_change = under(RESUME_MAY_CHANGE)
    fixed, other = config_changes(
        saved_config(run_dir / "config.yaml"), current, lambda key: not may_change(key)
    )
    if fixed:
        raise FinetuneInputError(
            f"{run_dir} holds checkpoints of another run ({'; '.join(fixed)}): use another run_name or "
            "output_dir, or delete the directory to start over"
        )
    if is_main_process():
        changed = f" (changed: {'; '.join(other)})" if other else ""
        print(f"{run_dir}: resuming from {Path(checkpoint).name}{changed}", file=sys.stderr)


def run(cfg: FinetuneConfig) -> list[Path]:
    """Every seed of ``cfg`` (inputs checked and data loaded once, first); returns the run directories."""
    export_launcher_env(cfg)
    check_inputs(cfg)
    data, ood = load_inputs(cfg)
    for seed in cfg.seeds:  # a seed that cannot resume fails before any seed runs
        check_resume(cfg, seed_dir(cfg, data.spec, seed), seed)
    return [run_seed(cfg, data, seed, ood) for seed in cfg.seeds]


def print_run_dirs(run_dirs: list[Path]) -> None:
    """The CLI's output: one run directory a line, printed by rank 0 only."""
    if is_main_process():
        for run_dir in run_dirs:
            print(run_dir)


__all__ = [
    "build_objective",
    "check_inputs",
    "default_epochs",
    "merge_predictions",
    "print_run_dirs",
    "run",
    "run_name",
    "run_seed",
]
