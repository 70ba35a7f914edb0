"""One job = one task x one model x seeds: check the inputs, load data once, train each seed on the
Hugging Face ``Trainer`` (:mod:`finetune.hf_trainer`), write its run directory (rank 0 only).

Run directory ``output_dir/<task>/<run_name>/seed<k>/``: ``metrics.json`` (scores per evaluation split,
history of evaluations), ``config.yaml`` (the resolved config, seeds narrowed to this one), ``model/``
(Hugging Face directory with tokenizer and a model card ``README.md``), ``logs/`` (``metrics.jsonl``
and ``tensorboard/``, the logger both stages share), ``checkpoints/`` (for ``resume``). Distillation when
``cfg.distill.teacher`` is set. Every input is checked before anything is written.
"""

from __future__ import annotations

import dataclasses
import itertools
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path

import datasets
import numpy as np
from transformers import EvalPrediction, TrainingArguments, set_seed

from finetune.finetune_config import RESUME_MAY_CHANGE, FinetuneConfig, FinetuneInputError
from finetune.hf_trainer import (
    CHECKPOINTS,
    FitResult,
    ObjectiveTrainer,
    deepspeed_config,
    export_launcher_env,
    fit,
    per_device_batch,
    predict,
    resume_checkpoint,
    trainer_arguments,
    uses_cpu,
    wraparound_repeats,
)
from finetune.metrics import metric_values, task_score
from finetune.model_card import model_card
from finetune.modeling import init_from_teacher_layers, load_classifier, load_tokenizer
from finetune.objectives import FinetuneObjective, TaskDistiller
from finetune.tasks import TaskData, TaskSpec, load_eval_set, load_task_data
from finetune.tokenization import encode, limit
from pretrain_distill.core.assets import resolve_model_path
from pretrain_distill.core.config_loading import save_config, to_dict
from pretrain_distill.core.distributed import detect_env
from pretrain_distill.core.files import atomic_write_json
from pretrain_distill.core.model_names import find_model
from pretrain_distill.core.rank_watch import RankWatch, watching_ranks
from pretrain_distill.core.run_identity import check_same_run, saved_config
from pretrain_distill.core.run_lock import lock_output_dir
from pretrain_distill.export import EXPORT_DIR
from pretrain_distill.vocab import save_tokenizer


def default_epochs(spec: TaskSpec, multilingual: bool) -> float:
    """The paper's protocol (Appendix D): 3 epochs, CoLA 6 (10 multilingual), XNLI 5."""
    return 10.0 if spec.name == "cola" and multilingual else spec.epochs


def model_name(model: str) -> str:
    """A model's name in run directories and report rows: its directory's name, or for a distillation
    run's default export (``<run_dir>/export``) the run's (``runs/hs/export`` -> ``hs``)."""
    path = Path(model.rstrip("/"))
    return path.parent.name if path.name == EXPORT_DIR and path.parent.name else path.name


def run_name(cfg: FinetuneConfig) -> str:
    """``run_name``, by default the model's name (+ ``-<method>`` for task distillation)."""
    name = cfg.run_name or model_name(cfg.model)
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
    find_model(cfg.model, "model")
    if cfg.tokenizer:
        find_model(cfg.tokenizer, "tokenizer")
    if cfg.distill.teacher:
        find_model(cfg.distill.teacher, "distill.teacher")
    per_device_batch(cfg, detect_env().world_size)
    deepspeed_config(cfg)
    uses_cpu(cfg)


def load_inputs(cfg: FinetuneConfig) -> tuple[TaskData, dict[str, datasets.Dataset]]:
    """The task's data and its out-of-domain sets by name (columns and labels checked)."""
    data = load_task_data(cfg)
    ood = {
        s.name: limit(load_eval_set(s, data.spec, cfg.data_dir), cfg.max_eval_samples) for s in cfg.eval_sets
    }
    return data, ood


def run_seed(
    cfg: FinetuneConfig, data: TaskData, seed: int, ood: dict[str, datasets.Dataset], watch: RankWatch
) -> Path:
    """Train and evaluate one seed; returns its run directory (written by rank 0 only, which holds its
    lock meanwhile). ``watch`` starts watching the other ranks once the process group exists."""
    spec = data.spec
    run_dir = seed_dir(cfg, spec, seed)
    if not cfg.progress:
        datasets.disable_progress_bars()
    set_seed(seed)
    epochs = cfg.epochs or default_epochs(spec, cfg.multilingual)
    find_unused = bool(cfg.distill.teacher) and cfg.distill.method == "ild_rtc"
    args = trainer_arguments(cfg, run_dir, seed, epochs, spec.selection_split, find_unused)
    watch.start()  # the arguments started the job's process group
    lock = lock_output_dir(run_dir, "fine-tuning run", detect_env())
    try:
        return _train_seed(cfg, data, seed, ood, args, run_dir)
    finally:
        lock.release()


def _train_seed(
    cfg: FinetuneConfig,
    data: TaskData,
    seed: int,
    ood: dict[str, datasets.Dataset],
    args: TrainingArguments,
    run_dir: Path,
) -> Path:
    """:func:`run_seed`'s work under the lock: encode, train, evaluate, write the run directory."""
    spec = data.spec
    tokenizer = load_tokenizer(cfg.tokenizer or cfg.model, cfg.model)
    # rank 0 of the job encodes first and fills the datasets cache; the other ranks then read it
    with args.main_process_first(local=False, desc="encoding the task's datasets"):
        train = encode(limit(data.train, cfg.max_train_samples, seed), tokenizer, cfg.max_length)
        evals = {
            k: encode(limit(ds, cfg.max_eval_samples), tokenizer, cfg.max_length)
            for k, ds in data.evals.items()
        }
        ood_sets = {
            e.name: (encode(ood[e.name], tokenizer, cfg.max_length), e.prediction_map) for e in cfg.eval_sets
        }
    objective = build_objective(cfg, spec, seed)
    main = detect_env().is_main
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(dataclasses.replace(cfg, seeds=[seed]), run_dir / "config.yaml")
    start = time.time()
    result, trainer = fit(objective, train, evals, tokenizer, cfg, args, run_dir, split_metrics(spec))
    outcome = Outcome(result, trainer, len(train), time.time() - start)
    metrics = metrics_record(cfg, spec, seed, outcome, evals, ood_sets)
    if main:
        if cfg.save_model:
            model_dir = run_dir / "model"
            objective.export().save_pretrained(model_dir)  # load_classifier reads it back
            save_tokenizer(tokenizer, resolve_model_path(cfg.tokenizer or cfg.model), model_dir)
            card = model_card(metrics, spec.labels, full_paths=cfg.card_paths == "full")
            (model_dir / "README.md").write_text(card)
        atomic_write_json(run_dir / "metrics.json", metrics)
    return run_dir


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What training one seed gave: the fit result, the trainer (for predictions), its size and time."""

    result: FitResult
    trainer: ObjectiveTrainer
    train_examples: int
    seconds: float


def metrics_record(
    cfg: FinetuneConfig,
    spec: TaskSpec,
    seed: int,
    outcome: Outcome,
    evals: dict[str, datasets.Dataset],
    ood: dict[str, tuple[datasets.Dataset, dict[str, str]]],
) -> dict:
    """``metrics.json``: the official metrics of every evaluation split (all ranks predict), the
    out-of-domain accuracies, the selection, the history and the command."""
    trainer, result = outcome.trainer, outcome.result

    def ood_accuracy(ds: datasets.Dataset, prediction_map: dict[str, str]) -> dict[str, float]:
        logits, labels = predict(trainer, ds)
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
        "world_size": detect_env().world_size,
        "train_examples": outcome.train_examples,
        "train_repeats_per_epoch": wraparound_repeats(outcome.train_examples, cfg, detect_env().world_size),
        "train_seconds": round(outcome.seconds, 2),
        "eval": {
            k: metric_values(spec.metrics, *predict(trainer, ds), spec.is_regression)
            for k, ds in evals.items()
        },
        "ood": {name: ood_accuracy(ds, prediction_map) for name, (ds, prediction_map) in ood.items()},
        "history": result.history,
        "command": shlex.join(sys.argv),
    }
    metrics["scores"] = {k: task_score(v) for k, v in metrics["eval"].items()}
    return metrics


def check_resume(cfg: FinetuneConfig, run_dir: Path, seed: int) -> None:
    """A seed directory holding checkpoints continues only the run that wrote them: ``resume: none``
    is refused, and so is any change of a field outside ``RESUME_MAY_CHANGE`` (one line naming each);
    a resume is announced on stderr with the fields that did change."""
    checkpoint = resume_checkpoint(run_dir / CHECKPOINTS, cfg.resume)
    if checkpoint is None:
        return

    def refuse(changes: str) -> FinetuneInputError:
        return FinetuneInputError(
            f"{run_dir} holds checkpoints of another run ({changes}): use another run_name or "
            "output_dir, or delete the directory to start over"
        )

    current = to_dict(dataclasses.replace(cfg, seeds=[seed]))
    other = check_same_run(saved_config(run_dir / "config.yaml"), current, RESUME_MAY_CHANGE, refuse)
    if detect_env().is_main:
        changed = f" (changed: {'; '.join(other)})" if other else ""
        print(f"{run_dir}: resuming from {Path(checkpoint).name}{changed}", file=sys.stderr)


def run(cfg: FinetuneConfig) -> list[Path]:
    """Every seed of ``cfg`` (inputs checked and data loaded once, first); returns the run directories."""
    export_launcher_env(cfg)
    check_inputs(cfg)
    data, ood = load_inputs(cfg)
    for seed in cfg.seeds:  # a seed that cannot resume fails before any seed runs
        check_resume(cfg, seed_dir(cfg, data.spec, seed), seed)
    with watching_ranks(detect_env()) as watch:  # another rank's death: one line naming it
        return [run_seed(cfg, data, seed, ood, watch) for seed in cfg.seeds]


def print_run_dirs(run_dirs: list[Path]) -> None:
    """The CLI's output: one run directory a line, printed by rank 0 only."""
    if detect_env().is_main:
        for run_dir in run_dirs:
            print(run_dir)


def sweep_jobs(cfg: FinetuneConfig, tasks: list[str]) -> list[FinetuneConfig]:
    """One config per (task, seed), in task-major order, with ``{task}`` substituted."""
    out = []
    for task, seed in itertools.product(tasks, cfg.seeds):
        distill = dataclasses.replace(cfg.distill, teacher=cfg.distill.teacher.format(task=task))
        out.append(
            dataclasses.replace(
                cfg,
                task=task,
                seeds=[seed],
                model=cfg.model.format(task=task),
                run_name=cfg.run_name.format(task=task),
                distill=distill,
            )
        )
    return out


__all__ = [
    "build_objective",
    "check_inputs",
    "default_epochs",
    "merge_predictions",
    "print_run_dirs",
    "run",
    "run_name",
    "run_seed",
    "sweep_jobs",
]
