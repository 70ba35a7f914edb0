"""The distillation run's configuration schema: one typed object, every field documented where declared.

A run is ``teacher + student + objective + data + train`` (+ a DeepSpeed JSON). YAML files under
``configs/`` compose into it (see :mod:`pretrain_distill.core.config_loading`); the resolved object is saved
beside every output as ``config.yaml``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal, Optional, Union

from pretrain_distill.core.config_loading import load_config


@dataclass
class TeacherConfig:
    # Hugging Face model directory (or hub name when online). "minilm" = the embedded
    # all-MiniLM-L6-v2 teacher located by `pretrain-distill assets`.
    path: str = "minilm"
    # Tokenizer directory; empty = the teacher's own.
    tokenizer: str = ""
    # Teacher weights' dtype on the accelerator: "auto" = bf16 on GPU, fp32 on CPU.
    dtype: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    # Attention implementation: "auto" = the family's preferred one (SDPA where the family allows it,
    # eager where it requires it: DeBERTa, MPNet); "flash_attention_2" needs CUDA and flash-attn.
    attention: Literal["auto", "sdpa", "eager", "flash_attention_2"] = "auto"


@dataclass
class StudentConfig:
    # A paper preset (pretrain_distill.models.PRESETS: 6L-DistilBERT, 6L, 4L, 3L) or null to give
    # the shape by numbers below. Numbers given together with a preset override the preset's.
    preset: Optional[str] = "3L"
    layers: Optional[int] = None  # Transformer layers L
    heads: Optional[int] = None  # attention heads A_h (must divide hidden)
    hidden: Optional[int] = None  # hidden width d_h
    ffn: Optional[int] = None  # feed-forward width d_f
    # "random": fresh weights. "teacher": DistilBERT-style, copy the embeddings and every k-th teacher
    # layer (widths must match the teacher's).
    init: Literal["random", "teacher"] = "random"
    # Start from this exported student / run checkpoint instead (multi-stage: OD after HS).
    init_from: str = ""
    # Encoder family of the student, as a model type (bert, roberta, xlm-roberta, camembert,
    # xlm-roberta-xl, electra, distilbert, modernbert, deberta-v2, eurobert, mpnet); "" = the
    # teacher's. Another family shares the teacher's tokenizer (e.g. a ModernBERT student of a BERT
    # teacher); init: teacher needs the teacher's family. See docs/models.md.
    family: str = ""
    # Attention implementation, as teacher.attention.
    attention: Literal["auto", "sdpa", "eager", "flash_attention_2"] = "auto"
    # Vocabulary: "full" (the teacher's) or "corpus": only the tokens of the training shards that occur at
    # least vocab_min_count times (counted by prepare; multilingual shards: each language weighted by how
    # often data.language_alpha samples it) and, with vocab_coverage < 1, only as many of the most
    # frequent as cover that share of the corpus tokens. Special tokens are always kept; any other token
    # reads as the unknown token. The teacher still reads the original ids; the export's tokenizer gives
    # the student's (WordPiece / WordLevel teachers). See docs/models.md, "Pruned vocabulary".
    vocab: Literal["full", "corpus"] = "full"
    vocab_min_count: int = 1
    vocab_coverage: float = 1.0

    # Allowed values of the numeric fields (checked at load time; see configuration.check_range).
    RANGES: ClassVar[dict[str, str]] = {
        "layers": ">= 1",
        "heads": ">= 1",
        "hidden": ">= 1",
        "ffn": ">= 1",
        "vocab_min_count": ">= 1",
        "vocab_coverage": "(0, 1]",
    }


@dataclass
class ObjectiveConfig:
    # Loss terms and their weights; the total is sum(weight * term). Terms: hs, od, minilmv2,
    # direct_minilm, cosine, mlm. DistilBERT = {cosine: 1, od: 5, mlm: 2} (Sanh et al. weights).
    weights: dict[str, float] = field(default_factory=lambda: {"minilmv2": 1.0})
    # HS layer mapping: single | last | uniform | uniform_cons | uniform_last | random, or an explicit
    # list with one list of 1-based teacher layers per student layer (e.g. [[2], [4], [6]]).
    mapping: Union[list[list[int]], str] = "uniform"
    # Random (RAIL-KD) mapping redraw schedule: "epoch" (default) or "step", or every N steps.
    remap_every: Union[int, str] = "epoch"
    # Seed of the random mapping draws: the mapping of epoch (or step block) n is a function of
    # (mapping_seed, n) only, so a resumed run redraws it from its counters.
    mapping_seed: int = 0
    # HS maps W_i^j: false (default) = eq. 6's plain linear map H^S W; true adds a bias (affine map).
    projection_bias: bool = False
    # OD temperature T (eq. 5) and the positions it averages over: masked tokens or all valid tokens.
    temperature: float = 1.0
    od_positions: Literal["masked", "all"] = "masked"
    # MiniLMv2 / DirectMiniLM: teacher layer ("L_T", "L_T-1", "L_T-2" or a 1-based number) and
    # student layer (1-based; null = the last layer).
    teacher_layer: str = "L_T-1"
    student_layer: Optional[int] = None
    # Rotary families (ModernBERT, EuroBERT): tap Q and K "before" the rotary position embedding
    # (default: content-only relations, comparable across families) or "after" it (what the layer's
    # attention scores use). V is never rotated; families without rotary ignore this.
    qk_rotary: Literal["before", "after"] = "before"
    # MiniLMv2 relation heads A_r (48 for base-size teachers; must divide both widths).
    relation_heads: int = 48
    # DirectMiniLM relation heads A_r (eq. 10: A_r = A_h); null = the student's attention heads.
    direct_relation_heads: Optional[int] = None
    # DirectMiniLM orthogonality penalty weight (eq. 11; the paper found it worse: off).
    orthogonal_weight: float = 0.0

    RANGES: ClassVar[dict[str, str]] = {
        "weights": ">= 0",
        "mapping": ">= 1",
        "remap_every": ">= 1",
        "mapping_seed": ">= 0",
        "temperature": "> 0",
        "student_layer": ">= 1",
        "relation_heads": ">= 1",
        "direct_relation_heads": ">= 1",
        "orthogonal_weight": ">= 0",
    }


@dataclass
class DataConfig:
    # Directory written by `pretrain-distill prepare` (webdataset shards + manifest.json); see docs/data.md.
    shards: str = "runs/shards/wiki"
    # DataLoader worker processes per rank (0 = read in the training process). Resume is exact with
    # any value; a checkpoint may also resume with another value / world size / batch size (elastic:
    # the rest of the epoch is re-split, each remaining sequence read exactly once).
    num_workers: int = 2
    # Batches each loader worker prepares ahead (DataLoader prefetch_factor; with num_workers > 0).
    prefetch_factor: int = 2
    # Shuffle window (sequences) per worker, on top of the per-epoch shard order and the in-shard
    # shuffle done by prepare; memory per worker ~ shuffle_buffer x max_length x 2 bytes.
    shuffle_buffer: int = 2048
    # Multilingual sampling p_l ∝ n_l^alpha (1.0 keeps the corpus distribution, 0.3 as XLM-R); an
    # epoch always holds the corpus's sequence count, so only the language mix changes.
    language_alpha: float = 1.0
    # Dynamic MLM masking (only used when an objective needs it): 15%, 80/10/10.
    mlm_probability: float = 0.15
    # Skip a corrupt / empty shard with a warning (its sequences replaced by repeats of others in the
    # same shuffle window, so every rank keeps its step count) instead of stopping with an error.
    skip_bad_shards: bool = False
    # Held-out shards for validation during training (see train.eval_every): "" = <shards>/validation
    # when `prepare --validation-fraction F` (or --validation-source) wrote it, else no validation;
    # "none" = no validation; or the path of a prepared shard directory (same tokenizer).
    validation: str = ""

    RANGES: ClassVar[dict[str, str]] = {
        "num_workers": ">= 0",
        "prefetch_factor": ">= 1",
        "shuffle_buffer": ">= 1",
        "language_alpha": ">= 0",
        "mlm_probability": "(0, 1)",
    }


@dataclass
class TrainConfig:
    # Run directory: checkpoints, logs, plots, resolved config, exported model.
    output_dir: str = "runs/distill"
    # Training length: epochs over the shards, or a step budget (max_steps > 0 wins).
    epochs: float = 7.0
    max_steps: int = 0
    # Per-GPU micro batch and gradient accumulation (global batch = micro * accum * world size).
    # These are the one source of truth: the DeepSpeed JSON must not disagree.
    micro_batch_size: int = 32
    grad_accum: int = 1
    # AdamW (Appendix B): peak LR 5e-4 (OD stage 3e-4), betas (0.9, 0.98).
    lr: float = 5e-4
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    weight_decay: float = 0.01
    # Linear warmup over this fraction of the steps, then linear decay to 0.
    warmup_ratio: float = 0.05
    grad_clip: float = 1.0
    # Numeric precision of the student: bf16 | fp16 | fp32 (CPU: bf16 or fp32).
    precision: Literal["bf16", "fp16", "fp32"] = "bf16"
    # DeepSpeed JSON (ZeRO stage, communication), merged with the fields above: a path, or relative to
    # configs/. It may not disagree with the batch / clipping / precision fields above (error).
    deepspeed: str = "deepspeed/zero2.json"
    zero_stage: Optional[int] = None  # overrides the JSON's zero_optimization.stage when set
    # Device: auto (cuda when present), cpu or cuda.
    device: Literal["auto", "cpu", "cuda"] = "auto"
    seed: int = 42
    # Checkpoint every N optimizer steps (and at the end), keep the last K.
    save_every: int = 1000
    keep_last: int = 3
    # "auto": continue from the newest complete checkpoint in output_dir whose files pass their size
    # and checksum checks (newer damaged ones are skipped with a warning); "none": start a new run
    # (refused when output_dir already holds checkpoints); "overwrite": start a new run after moving
    # the old one's outputs to output_dir/replaced-<time>/; or the path of a checkpoint directory.
    resume: str = "auto"
    # Log every N steps (tqdm, JSON lines and TensorBoard under <output_dir>/logs/).
    log_every: int = 10
    # Also log to these trackers: wandb (W&B; WANDB_MODE=offline works without an account) and / or
    # mlflow (MLFLOW_TRACKING_URI, default a file store under logs/mlruns). Optional extras:
    # pip install 'distill-encoders[wandb]' / '[mlflow]'.
    report_to: list[Literal["wandb", "mlflow"]] = field(default_factory=list)
    # Validate every N optimizer steps (0 = never) when held-out shards exist (data.validation): each
    # loss term and the total, in eval mode, on the same first eval_batches micro-batches of the
    # held-out set with the same masks each time; logged as val_loss, val_loss_<term>. At the defaults
    # it costs about 1% of the training time (docs/engine.md, "Validation").
    eval_every: int = 1000
    eval_batches: int = 50
    # Non-finite losses tolerated (skipped micro-batches, replaced by the next ones) before the run
    # stops with an error naming the step and the loss terms.
    nan_skip_budget: int = 0
    # Export the student (base encoder; the MLM head too if the objective trained it) to
    # <output_dir>/export at the end: the end-of-run hook `pretrain-distill train` passes to engine.train.
    export: bool = True
    # Speed lever: torch.compile every Transformer layer of the student and of the frozen teacher with
    # this backend ("inductor" on GPU; "aot_eager" traces without code generation) or "none" (eager).
    # Same losses within float rounding; costs a compilation at start-up (and per new batch shape).
    # Other levers are fields above: teacher.dtype (bf16 weights), train.micro_batch_size. AdamW is
    # always torch's fused implementation (its found_inf input skips a non-finite step on the device).
    compile: str = "none"

    RANGES: ClassVar[dict[str, str]] = {
        "epochs": "> 0",
        "max_steps": ">= 0",
        "micro_batch_size": ">= 1",
        "grad_accum": ">= 1",
        "lr": ">= 0",  # 0: a frozen run (tests use it)
        "betas": "[0, 1)",
        "eps": "> 0",
        "weight_decay": ">= 0",
        "warmup_ratio": "[0, 1)",
        "grad_clip": ">= 0",
        "zero_stage": "[0, 3]",
        "seed": ">= 0",
        "save_every": ">= 1",
        "keep_last": ">= 1",
        "log_every": ">= 1",
        "eval_every": ">= 0",  # 0: never
        "eval_batches": ">= 1",
        "nan_skip_budget": ">= 0",
    }


@dataclass
class RunConfig:
    """A whole distillation run."""

    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


#: What a resumed run may change (:mod:`pretrain_distill.core.run_identity`); everything else (the teacher,
#: the student, the objective, the masking rate) is the run's identity. The data is checked by its content,
#: not its path, when the loader restores its position (sequence count, tokenizer checksum, seed, shuffle,
#: language sampling), so shards copied to a node-local disk after a requeue resume.
RESUME_MAY_CHANGE: tuple[str, ...] = (
    "teacher.tokenizer",
    "teacher.dtype",
    "teacher.attention",
    "student.attention",
    "data.shards",
    "data.num_workers",
    "data.prefetch_factor",
    "data.shuffle_buffer",
    "data.language_alpha",
    "data.skip_bad_shards",
    "data.validation",
    "train",
)


def load_run_config(files: list[str] | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Compose YAML ``files`` + ``overrides`` into a validated :class:`RunConfig`."""
    return load_config(RunConfig, files, overrides)


__all__ = [
    "RESUME_MAY_CHANGE",
    "DataConfig",
    "ObjectiveConfig",
    "RunConfig",
    "StudentConfig",
    "TeacherConfig",
    "TrainConfig",
    "load_run_config",
]
