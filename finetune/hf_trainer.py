"""Training on the Hugging Face ``Trainer``: distributed sampling (each example once per epoch across
ranks, up to the wrap-around of a last uneven global batch), DDP / DeepSpeed, bf16 / fp16, gradient
accumulation, checkpoints and resume, best-on-dev or last selection.

What stays ours: the objective (:mod:`finetune.objectives`: ``forward(batch)`` -> loss terms,
``logits(inputs)``, ``set_epoch(epoch)``), plugged in through ``compute_loss`` / ``prediction_step``; a
callback that evaluates after every epoch (and every ``eval_every`` steps) and checkpoints at every
evaluation so that the best one can be restored; and the pieces both stages share
(:mod:`pretrain_distill.core`): the learning-rate schedule, the metrics logger (JSONL + TensorBoard,
W&B / MLflow by option), rank detection, and checkpoint trust (every checkpoint gets a ``COMPLETE``
marker with its files' sizes and checksums, and a resume takes the newest one that verifies). Only
rank 0 writes (the Trainer's own rule for checkpoints; ours for logs and markers).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn
from transformers import (
    DataCollatorWithPadding,
    EvalPrediction,
    PreTrainedTokenizerBase,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from finetune.finetune_config import FinetuneConfig, FinetuneInputError
from finetune.metrics import METRIC_NAMES
from pretrain_distill.core.checkpoint_trust import (
    COMPLETE,
    CheckpointError,
    mark_complete,
    newest_verified,
    verify_checkpoint,
)
from pretrain_distill.core.config_loading import CONFIG_ROOT, to_dict
from pretrain_distill.core.distributed import (
    barrier,
    detect_env,
    export_rank_env,
    init_distributed,
    require_device,
)
from pretrain_distill.core.lr_schedule import build_lr_scheduler
from pretrain_distill.core.metrics_log import MetricsLogger

CHECKPOINTS = "checkpoints"
LOGS = "logs"


@dataclass
class FitResult:
    """What :func:`fit` did: one record per evaluation, the one kept, the optimizer steps taken."""

    history: list[dict] = field(default_factory=list)
    selected_epoch: float = 0
    selected_step: int = 0
    steps: int = 0


class TermMeans:
    """Running means of the objective's loss terms (averaged over ranks when read)."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.count = 0

    def add(self, terms: dict[str, torch.Tensor]) -> None:
        for k, v in terms.items():
            self.sums[k] = self.sums.get(k, 0.0) + v.detach().float()
        self.count += 1

    def pop(self) -> dict[str, float]:
        """The means since the last ``pop`` (every rank must call it: it all-reduces), then reset."""
        if not self.sums:
            return {}
        values = torch.stack(list(self.sums.values())) / self.count
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(values)
            values /= torch.distributed.get_world_size()
        out = dict(zip(self.sums, values.tolist()))
        self.sums, self.count = {}, 0
        return out


class ObjectiveTrainer(Trainer):
    """``Trainer`` whose model is a :mod:`finetune.objectives` objective: its total is the loss, its terms are
    logged (``ce``, ``kd``, ``layer``) and its ``logits`` are what evaluation scores."""

    loss_is_scaled_for_ga = False  # a per-batch mean: the Trainer divides it by the accumulation steps

    def __init__(self, *args, eval_splits: tuple[str, ...] = (), warmup_ratio: float = 0.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.eval_splits = eval_splits
        self.warmup_ratio = warmup_ratio
        self.log_terms, self.eval_terms = TermMeans(), TermMeans()

    def create_scheduler(self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None):
        """The learning-rate schedule of both stages (linear warmup + linear decay), not the Trainer's."""
        if self.lr_scheduler is None:
            self.lr_scheduler = build_lr_scheduler(
                optimizer or self.optimizer, num_training_steps, self.warmup_ratio
            )
            self._created_lr_scheduler = True
        return self.lr_scheduler

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        terms = model(inputs)
        loss = terms["loss"]
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss at step {self.state.global_step + 1}: {loss.item()}")
        self.log_terms.add(terms)
        self.eval_terms.add(terms)
        return (loss, terms) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.accelerator.autocast():
            logits = self.accelerator.unwrap_model(model).logits(inputs)
        return None, logits.float(), inputs["labels"]

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:  # a training log (every rank gets here): add the mean loss terms
            logs = logs | {f"loss_{k}": v for k, v in self.log_terms.pop().items() if k != "loss"}
        super().log(logs, start_time)

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval"):
        metrics = super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        if eval_dataset is None and self.is_in_train:  # a training-time evaluation of every split
            record = {
                "epoch": round(self.state.epoch or 0.0, 4),
                "step": self.state.global_step,
                "train": self.eval_terms.pop(),
                "scores": {s: metrics[f"{metric_key_prefix}_{s}_score"] for s in self.eval_splits},
            }
            self.state.log_history.append({"evaluation": record, "step": record["step"]})  # checkpointed
            if self.is_world_process_zero():
                print(evaluation_line(record, metrics, self.eval_splits, metric_key_prefix), flush=True)
        return metrics


def evaluation_line(record: dict, metrics: dict, splits: tuple[str, ...], prefix: str = "eval") -> str:
    """``epoch 2: accuracy 0.8730`` (one split) or ``epoch 2.5 (step 40): dev_matched accuracy 0.8000;
    dev_mismatched accuracy 0.7900``."""
    where = f"epoch {record['epoch']:g}"
    if record["epoch"] != round(record["epoch"]):
        where += f" (step {record['step']})"
    parts = []
    for split in splits:
        shown = [f"{m} {metrics[k]:.4f}" for m in METRIC_NAMES if (k := f"{prefix}_{split}_{m}") in metrics]
        parts.append((f"{split} " if len(splits) > 1 else "") + ", ".join(shown))
    return f"{where}: " + "; ".join(parts)


class EvaluationFlow(TrainerCallback):
    """Evaluate after every epoch (also when ``max_steps`` ends one early) and every ``eval_every`` steps;
    checkpoint at every evaluation (so the best one exists to restore); redraw the objective's
    per-epoch choices (RAIL-KD layers) at each epoch start."""

    def __init__(self, module: nn.Module, eval_every: int):
        self.module, self.eval_every = module, eval_every
        self.last_eval_step = -1

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.module.set_epoch(math.floor((state.epoch or 0.0) + 1e-6))

    def on_step_end(self, args, state, control, **kwargs):
        if self.eval_every and state.global_step % self.eval_every == 0:
            control.should_evaluate = control.should_save = True
        epoch_ends = abs((state.epoch or 0.0) - round(state.epoch or 0.0)) < 1e-6
        if epoch_ends or state.global_step >= state.max_steps:
            control.should_evaluate = control.should_save = False  # on_epoch_end does both, once
        return control

    def on_epoch_end(self, args, state, control, **kwargs):
        if self.last_eval_step != state.global_step:
            control.should_evaluate = control.should_save = True
        return control

    def on_evaluate(self, args, state, control, **kwargs):
        self.last_eval_step = state.global_step
        return control


class ProgressBars(ProgressCallback):
    """Transformers' progress bars without the dict of every log it writes under them: the evaluation
    lines (``evaluation_line``) and the JSON-lines log say it once, readably."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        return control


class MetricsCallback(TrainerCallback):
    """Every Trainer log (training terms, evaluations) into the metrics logger both stages use, on rank 0:
    ``logs/metrics.jsonl``, ``logs/tensorboard/`` and the ``report_to`` trackers. A resumed run first
    drops what was logged after its checkpoint, so the logs read as one uninterrupted run."""

    def __init__(self, log_dir: Path, report_to: list[str], run_name: str, config: dict):
        self.log_dir, self.report_to, self.run_name, self.config = log_dir, report_to, run_name, config
        self.logger: MetricsLogger | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.logger = MetricsLogger(
            self.log_dir,
            enabled=state.is_world_process_zero,
            resume_step=state.global_step,
            report_to=self.report_to,
            run_name=self.run_name,
            config=self.config,
        )

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.logger is not None:
            self.logger.log(state.global_step, {"epoch": state.epoch} | (logs or {}))

    def on_train_end(self, args, state, control, **kwargs):
        if self.logger is not None:
            self.logger.close()
            self.logger = None


class CompleteMarker(TrainerCallback):
    """After every checkpoint the Trainer writes, once every rank has written its part: the ``COMPLETE``
    marker with each file's size and SHA-256 (:mod:`pretrain_distill.core.checkpoint_trust`)."""

    def __init__(self, out: Path):
        self.out = out

    def on_save(self, args, state, control, **kwargs):
        barrier()
        if state.is_world_process_zero:
            mark_complete(self.out / f"checkpoint-{state.global_step}", {"step": state.global_step})
        barrier()
        return control


def uses_cpu(cfg: FinetuneConfig) -> bool:
    """Whether ``cfg.device`` means the CPU (``auto`` without CUDA); ``cuda`` without a GPU is an error."""
    require_device(cfg.device)
    return cfg.device == "cpu" or (cfg.device == "auto" and not torch.cuda.is_available())


def export_launcher_env(cfg: FinetuneConfig) -> None:
    """Export the rank / rendezvous variables the Trainer reads (``RANK``, ``WORLD_SIZE``, ...) when the
    launcher did not: SLURM ``srun`` with several tasks, and DeepSpeed without a launcher (it reads
    them too, and would look for MPI otherwise)."""
    env = detect_env()
    if (env.launcher == "slurm" and env.world_size > 1) or (cfg.deepspeed and env.launcher == "none"):
        export_rank_env(env)


def start_deepspeed(cfg: FinetuneConfig) -> None:
    """DeepSpeed's process group, started the project's way (gloo on CPU, NCCL on GPU; idempotent)."""
    env = detect_env()
    init_distributed(env, torch.device("cpu" if uses_cpu(cfg) else f"cuda:{env.local_rank}"))


def per_device_batch(cfg: FinetuneConfig, world: int) -> int:
    """``batch_size`` is the global batch: split over ``world`` ranks and ``grad_accum`` micro-batches."""
    parts = world * cfg.grad_accum
    if cfg.batch_size % parts:
        raise FinetuneInputError(
            f"batch_size: the global batch {cfg.batch_size} does not split over {world} rank(s) x "
            f"grad_accum {cfg.grad_accum}; use a multiple of {parts}"
        )
    return cfg.batch_size // parts


def wraparound_repeats(examples: int, cfg: FinetuneConfig, world: int) -> int:
    """Examples trained twice per epoch on ``world`` ranks: the last uneven round of micro-batches is
    completed with examples from the epoch's start (accelerate's ``even_batches``), so that every rank
    takes the same number of steps; one process just takes a smaller last batch."""
    if world == 1:
        return 0
    per_round = per_device_batch(cfg, world) * world
    return -examples % per_round


def deepspeed_config(cfg: FinetuneConfig) -> dict | None:
    """The DeepSpeed JSON (relative to ``configs/`` or the cwd) with its batch / clipping left to the
    Trainer ("auto"); ZeRO-3 is rejected (best-epoch selection reloads full weights)."""
    if not cfg.deepspeed:
        return None
    path = next((p for p in (Path(cfg.deepspeed), CONFIG_ROOT / cfg.deepspeed) if p.is_file()), None)
    if path is None:
        raise FinetuneInputError(
            f"deepspeed: config not found: {cfg.deepspeed} (also looked in {CONFIG_ROOT})"
        )
    ds = json.loads(path.read_text())
    if ds.get("zero_optimization", {}).get("stage", 0) >= 3:
        raise FinetuneInputError(
            "deepspeed: fine-tuning supports ZeRO stages 0-2 (best-epoch selection reads full weights)"
        )
    for key in (
        "train_batch_size",
        "train_micro_batch_size_per_gpu",
        "gradient_accumulation_steps",
        "gradient_clipping",
    ):
        ds[key] = "auto"
    return ds


def training_arguments(
    cfg: FinetuneConfig, out: Path, seed: int, epochs: float, selection_split: str, find_unused: bool
) -> TrainingArguments:
    """The Trainer's settings for ``cfg`` (checkpoints under ``out``)."""
    world = detect_env().world_size
    cpu = uses_cpu(cfg)
    return TrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=per_device_batch(cfg, world),
        per_device_eval_batch_size=cfg.eval_batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        num_train_epochs=epochs,
        max_steps=cfg.max_steps if cfg.max_steps > 0 else -1,
        learning_rate=cfg.lr,
        lr_scheduler_type="linear",
        warmup_steps=cfg.warmup_ratio,
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.grad_clip,
        bf16=cfg.precision == "bf16",
        fp16=cfg.precision == "fp16",
        logging_strategy="steps",
        logging_steps=cfg.log_every,
        eval_strategy="no",  # EvaluationFlow decides
        save_strategy="steps",
        save_steps=cfg.save_every,
        save_total_limit=cfg.keep_last,
        metric_for_best_model=f"eval_{selection_split}_score" if cfg.select == "best" else None,
        greater_is_better=True,
        seed=seed,
        data_seed=seed,
        use_cpu=cpu,
        ddp_backend="gloo" if cpu and world > 1 else None,
        ddp_find_unused_parameters=find_unused if world > 1 else None,
        dataloader_num_workers=cfg.num_workers,
        remove_unused_columns=False,
        label_names=["labels"],
        report_to="none",
        disable_tqdm=not cfg.progress,
        deepspeed=deepspeed_config(cfg),
        log_level="warning",
    )


def resume_checkpoint(out: Path, resume: str) -> str | None:
    """With ``resume: auto``, the newest checkpoint under ``out`` whose ``COMPLETE`` marker verifies (a
    folder without one was cut short by a kill; a damaged one is skipped with a warning); with
    ``resume: none`` an earlier run's checkpoints are an error (nothing is overwritten silently)."""
    folders = out.glob("checkpoint-*") if out.is_dir() else []
    complete = sorted(
        (p for p in folders if p.name.split("-")[-1].isdigit() and (p / COMPLETE).is_file()),
        key=lambda p: int(p.name.split("-")[-1]),
    )
    if complete and resume == "none":
        raise FinetuneInputError(
            f"{out} holds checkpoints of an earlier run: resume=auto continues it, or delete it"
        )
    try:
        checkpoint = newest_verified(complete, out)
    except CheckpointError as err:
        raise FinetuneInputError(str(err)) from None
    return str(checkpoint) if checkpoint is not None else None


def trainer_arguments(
    cfg: FinetuneConfig,
    run_dir: Path,
    seed: int,
    epochs: float,
    selection_split: str,
    find_unused_parameters: bool = False,
) -> TrainingArguments:
    """The Trainer's settings for one seed (checkpoints under ``run_dir/checkpoints``); with several
    ranks they start the job's process group (DeepSpeed's first when ``cfg.deepspeed`` is set), so that
    ``args.main_process_first()`` works before training (dataset encoding: rank 0 first)."""
    if cfg.deepspeed:
        start_deepspeed(cfg)
    return training_arguments(
        cfg, run_dir / CHECKPOINTS, seed, epochs, selection_split, find_unused_parameters
    )


def fit(
    module: nn.Module,
    train: datasets.Dataset,
    evals: dict[str, datasets.Dataset],
    tokenizer: PreTrainedTokenizerBase,
    cfg: FinetuneConfig,
    args: TrainingArguments,
    run_dir: Path,
    compute_metrics: Callable[[EvalPrediction], dict[str, float]],
) -> tuple[FitResult, ObjectiveTrainer]:
    """Train ``module`` on ``train`` with ``args`` (:func:`trainer_arguments`), evaluating every split of
    ``evals`` after every epoch; ``compute_metrics`` returns the split's metrics and its ``score``. With
    ``select: best`` the module ends with the weights of the evaluation that scored best on the split
    ``args.metric_for_best_model`` names. Returns the result and the trainer (for further distributed predictions)."""
    if len(train) == 0:
        raise FinetuneInputError("nothing to train: the training set is empty")
    checkpoint = resume_checkpoint(run_dir / CHECKPOINTS, cfg.resume)
    trainer = ObjectiveTrainer(
        model=module,
        args=args,
        train_dataset=train,
        eval_dataset=evals,
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=compute_metrics,
        callbacks=_callbacks(module, cfg, args.seed, run_dir),
        eval_splits=tuple(evals),
        warmup_ratio=cfg.warmup_ratio,
    )
    trainer.remove_callback(PrinterCallback)  # no dict per log on stdout: the JSONL has them
    if trainer.pop_callback(ProgressCallback) is not None:
        trainer.add_callback(ProgressBars())
    trainer.train(resume_from_checkpoint=checkpoint)
    history = [e["evaluation"] for e in trainer.state.log_history if "evaluation" in e]
    selected = history[-1]
    best = trainer.state.best_model_checkpoint
    if cfg.select == "best" and best and trainer.state.best_global_step != trainer.state.global_step:
        verify_checkpoint(best)  # CheckpointError naming a damaged file, never a silent wrong model
        module.load_state_dict(load_file(str(Path(best) / "model.safetensors"), device="cpu"))
        selected = next(r for r in history if r["step"] == trainer.state.best_global_step)
    return FitResult(history, selected["epoch"], selected["step"], trainer.state.global_step), trainer


def _callbacks(module: nn.Module, cfg: FinetuneConfig, seed: int, run_dir: Path) -> list[TrainerCallback]:
    """Evaluation flow, checkpoint markers and the metrics logger (named ``<task>/<run>/seed<k>``)."""
    config = to_dict(dataclasses.replace(cfg, seeds=[seed]))
    return [
        EvaluationFlow(module, cfg.eval_every),
        CompleteMarker(run_dir / CHECKPOINTS),
        MetricsCallback(run_dir / LOGS, list(cfg.report_to), "/".join(run_dir.parts[-3:]), config),
    ]


def predict(trainer: ObjectiveTrainer, ds: datasets.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """Logits ``[N, C]`` and labels ``[N]`` of the trained objective over ``ds`` (all ranks take part
    and each gets the whole result)."""
    out = trainer.predict(ds)
    return out.predictions, out.label_ids
