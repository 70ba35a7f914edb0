"""The fine-tuning stage's configuration schema: one typed object, every field documented where declared.

YAML files under ``configs/finetune/`` compose into :class:`FinetuneConfig` with the machinery of
:mod:`pretrain_distill.core.config_loading` (``defaults:`` lists, ``key=value`` / ``--key value`` overrides,
unknown keys and wrong types rejected). Every run saves the resolved object as ``config.yaml``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal, Optional

from pretrain_distill.core.config_loading import load_config
from pretrain_distill.core.errors import ConfigError


class FinetuneInputError(ConfigError):
    """A fine-tuning input that cannot work (missing model directory, task file without the named
    columns, labels that differ between train and dev, a batch that does not split over the ranks):
    raised before anything is written."""


@dataclass
class TableConfig:
    """How to read one labelled table (CSV / TSV / JSONL file, or a Hugging Face dataset split)."""

    # File format; "auto" = from the extension (.csv, .tsv/.txt, .jsonl/.json).
    format: Literal["auto", "csv", "tsv", "jsonl"] = "auto"
    # CSV/TSV: whether the first line names the columns; without one, name them in `columns`.
    header: bool = True
    columns: list[str] = field(default_factory=list)
    # Text column, optional second text column (sentence pairs; empty = single sentence), label column.
    text_column: str = "sentence"
    text_pair_column: str = ""
    label_column: str = "label"
    # Raw label value -> label name (e.g. {entails: entailment}); applied before the label lookup.
    label_map: dict[str, str] = field(default_factory=dict)
    # Read from the Hugging Face hub instead of a file (online users): dataset name and config.
    hf_name: str = ""
    hf_config: str = ""


@dataclass
class CustomTaskConfig(TableConfig):
    """A user task (``task: custom``): train and evaluation files with named columns."""

    # Numeric ranges, checked at load time (the error names the key).
    RANGES: ClassVar[dict[str, str]] = {"dev_fraction": "(0, 1)"}

    # Name shown in outputs and reports.
    name: str = "custom"
    # Training file (or HF split name when hf_name is set).
    train_file: str = ""
    # Evaluation split name -> file (or HF split); the first one selects the best epoch.
    # Empty: hold out `dev_fraction` of the training file as "dev".
    eval_files: dict[str, str] = field(default_factory=dict)
    dev_fraction: float = 0.1
    task_type: Literal["classification", "regression"] = "classification"
    # Label names in id order; empty = the distinct training labels, sorted (numerically if integers).
    labels: list[str] = field(default_factory=list)
    # Metrics (mcc, pearson, spearman, f1, accuracy); empty = accuracy (classification) or
    # pearson + spearman (regression).
    metrics: list[str] = field(default_factory=list)


@dataclass
class EvalSetConfig(TableConfig):
    """An extra (out-of-domain) evaluation set with the training task's labels (RAIL-KD section 4.1)."""

    # Name shown in outputs and reports (e.g. scitail, paws, imdb).
    name: str = ""
    # File (relative paths are tried under data_dir first) or HF split when hf_name is set.
    file: str = ""
    # Training-task label name -> label name it counts as here (MNLI -> SciTail: contradiction ->
    # neutral, since SciTail has only entails / neutral).
    prediction_map: dict[str, str] = field(default_factory=dict)


@dataclass
class DistillConfig:
    """Task-specific distillation (``finetune distill``); the student is ``FinetuneConfig.model``.

    Loss: ``ce_weight * CE + kd_weight * KD_T + layer_weight * L_layer``; unset weights take the method's
    defaults (``finetune.objectives.METHOD_DEFAULTS``)."""

    # Fine-tuned teacher: a Hugging Face sequence-classification directory for this task.
    teacher: str = ""
    # vanilla | pkd | rail_l | rail_c | ild_rtc (see docs/finetune.md for the equations).
    method: Literal["vanilla", "pkd", "rail_l", "rail_c", "ild_rtc"] = "vanilla"
    # Loss weights (alpha = ce_weight, 1 - alpha = kd_weight, beta = layer_weight in the papers).
    ce_weight: Optional[float] = None
    kd_weight: Optional[float] = None
    layer_weight: Optional[float] = None
    # Softmax temperature T of the KD term, and whether it is scaled by T^2 (Hinton et al.).
    temperature: Optional[float] = None
    kd_t2: Optional[bool] = None
    # PKD teacher layers: "skip" {k, 2k, ...}, k = floor(N/M), or "last" {N-M+1, ..., N-1}.
    pkd_strategy: Literal["skip", "last"] = "skip"
    # RAIL-KD projection width u (eqs. 2-3).
    rail_dim: int = 128
    # Student weights: "pretrained" (the student directory as is), "teacher_layers" (the teacher's
    # embeddings and first M layers; widths must match), "auto" (teacher_layers for ild_rtc when the
    # widths match, else pretrained).
    student_init: Literal["auto", "pretrained", "teacher_layers"] = "auto"

    RANGES: ClassVar[dict[str, str]] = {
        "ce_weight": ">= 0",
        "kd_weight": ">= 0",
        "layer_weight": ">= 0",
        "temperature": "> 0",
        "rail_dim": ">= 1",
    }


@dataclass
class FinetuneConfig:
    """One fine-tuning (or task-distillation) job: a model, a task, one or more seeds."""

    # Model directory (Hugging Face; an encoder-only export gets a fresh classification head).
    # "minilm" = the embedded all-MiniLM-L6-v2 teacher.
    model: str = "minilm"
    # Tokenizer directory; empty = the model's own.
    tokenizer: str = ""
    # Task: cola sst2 mrpc stsb qqp mnli qnli rte wnli xnli movies, or custom (see `custom`).
    task: str = "sst2"
    custom: CustomTaskConfig = field(default_factory=CustomTaskConfig)
    # Local data directory in the official GLUE / XNLI layout (SST-2/train.tsv, XNLI-1.0/xnli.test.tsv);
    # empty = the Hugging Face `glue` / `xnli` datasets (online).
    data_dir: str = ""
    # XNLI training data: English MNLI train, or XNLI's English (machine-translation) training set.
    xnli_train: Literal["mnli", "xnli_en"] = "mnli"
    # Extra out-of-domain evaluation sets with the same labels (configs/finetune/ood_*.yaml).
    eval_sets: list[EvalSetConfig] = field(default_factory=list)
    # Runs go to output_dir/<task>/<run_name>/seed<k>/; run_name empty = the model directory's name
    # (plus the method for distillation).
    output_dir: str = "runs/finetune"
    run_name: str = ""
    # Seeds: one run each (the paper reports mean (std) over 3).
    seeds: list[int] = field(default_factory=lambda: [1, 2, 3])
    # Paper protocol (Appendix D): AdamW at 2e-5, batch 32, 3 epochs (CoLA 6 mono / 10 multi, XNLI 5).
    lr: float = 2e-5
    # The global (effective) batch: split over the ranks (torchrun / deepspeed) and `grad_accum`
    # micro-batches, so the protocol does not depend on the number of GPUs. Evaluation batch: per rank.
    batch_size: int = 32
    eval_batch_size: int = 128
    # Gradient accumulation: micro-batches per optimizer step (batch_size / (ranks * grad_accum) each).
    grad_accum: int = 1
    # fp32, or bf16 / fp16 mixed precision (autocast; fp16 with a loss scaler).
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    # Epochs; null = the paper's per-task number (`multilingual` picks CoLA's 10).
    epochs: Optional[float] = None
    multilingual: bool = False
    max_length: int = 128
    # Linear warmup over this fraction of the steps, then linear decay to 0 (not in the paper: our choice;
    # the schedule of both stages, pretrain_distill.core.lr_schedule).
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    # Keep the evaluation with the best selection-split score ("best") or the last one.
    select: Literal["best", "last"] = "best"
    # The evaluation splits are scored (one printed line, logged) after every epoch and, when > 0,
    # also every `eval_every` optimizer steps.
    eval_every: int = 0
    # Checkpoints (run_dir/checkpoints/checkpoint-<step>: weights, optimizer, scheduler, RNG, loader
    # position; a COMPLETE marker with every file's size and SHA-256, verified before a resume) are
    # written at every evaluation and, when > 0, every `save_every` steps; the newest `keep_last` are
    # kept, plus the best one.
    save_every: int = 0
    keep_last: int = 2
    # As in `pretrain-distill train`: "auto" continues from the newest checkpoint of each seed's directory
    # whose files verify; "none" starts a new run, refused when the directory already holds checkpoints
    # (delete it to start over).
    resume: Literal["auto", "none"] = "auto"
    # Training loss terms go to run_dir/logs/metrics.jsonl and run_dir/logs/tensorboard/ every
    # `log_every` steps, with every evaluation.
    log_every: int = 50
    # Also log to these trackers: wandb (W&B; WANDB_MODE=offline works without an account) and / or
    # mlflow (MLFLOW_TRACKING_URI, default a file store under logs/mlruns). Optional extras:
    # pip install 'distill-encoders[wandb]' / '[mlflow]'.
    report_to: list[Literal["wandb", "mlflow"]] = field(default_factory=list)
    # Data-loader worker processes per rank.
    num_workers: int = 2
    # Demo / smoke-test limits: first N training / evaluation examples (after a seeded shuffle of
    # train), and a step budget (> 0 stops early).
    max_train_samples: Optional[int] = None
    max_eval_samples: Optional[int] = None
    max_steps: int = 0
    # auto = cuda when present.
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # DeepSpeed JSON config (relative to configs/ or cwd; ZeRO 0-2) handed to the Trainer (its batch,
    # accumulation and clipping come from this config); empty = plain PyTorch / DDP.
    deepspeed: str = ""
    # Save the (selected) model directory in the run.
    save_model: bool = True
    # How the saved model's card (model/README.md) names local paths (the model, the teacher, the
    # command's files): names (their last component; default) or full (this machine's absolute paths).
    card_paths: Literal["names", "full"] = "names"
    # tqdm progress bars.
    progress: bool = True
    distill: DistillConfig = field(default_factory=DistillConfig)

    RANGES: ClassVar[dict[str, str]] = {
        "seeds": ">= 0",
        "lr": "> 0",
        "batch_size": ">= 1",
        "eval_batch_size": ">= 1",
        "grad_accum": ">= 1",
        "epochs": "> 0",
        "max_length": ">= 2",  # [CLS] + [SEP]
        "warmup_ratio": "[0, 1)",
        "weight_decay": ">= 0",
        "grad_clip": ">= 0",
        "eval_every": ">= 0",
        "save_every": ">= 0",
        "keep_last": ">= 1",
        "log_every": ">= 1",
        "num_workers": ">= 0",
        "max_train_samples": ">= 1",
        "max_eval_samples": ">= 1",
        "max_steps": ">= 0",
    }

    def __post_init__(self) -> None:
        if not self.seeds:
            raise ConfigError("seeds: give at least one seed")


#: The fields a seed's run may change when it is resumed from its checkpoint (the rule of
#: :mod:`pretrain_distill.core.run_identity`): the budget, evaluation, checkpointing, logging, devices and
#: where things are. Any other change (model, task, training data, optimisation, precision,
#: distillation) would mix two runs into one result and is refused.
RESUME_MAY_CHANGE: tuple[str, ...] = (
    "output_dir",
    "data_dir",
    "seeds",
    "max_steps",
    "epochs",
    "eval_sets",
    "eval_batch_size",
    "eval_every",
    "max_eval_samples",
    "select",
    "save_every",
    "keep_last",
    "save_model",
    "card_paths",
    "resume",
    "log_every",
    "report_to",
    "num_workers",
    "device",
    "progress",
)


def load_finetune_config(
    files: list[str] | None = None, overrides: list[str] | None = None
) -> FinetuneConfig:
    """Compose YAML ``files`` + ``overrides`` into a validated :class:`FinetuneConfig`."""
    return load_config(FinetuneConfig, files, overrides)


__all__ = [
    "ConfigError",
    "CustomTaskConfig",
    "DistillConfig",
    "EvalSetConfig",
    "FinetuneConfig",
    "FinetuneInputError",
    "TableConfig",
    "load_finetune_config",
]
