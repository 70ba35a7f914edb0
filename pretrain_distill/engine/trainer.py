"""The distillation loop: :func:`train` builds teacher, student, Distiller, data stream and the DeepSpeed
engine from a :class:`RunConfig`, then trains with periodic atomic checkpoints, exact resume, preemption
handling, non-finite-loss guarding, progress and metrics, and an end-of-run hook (the CLI's export).
"""

from __future__ import annotations

import math
import resource
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from pretrain_distill.core.config_loading import save_config, to_dict
from pretrain_distill.core.distributed import (
    DistEnv,
    all_reduce_sum,
    any_rank,
    barrier,
    detect_env,
    init_distributed,
    launcher_env_scope,
    resolve_device,
)
from pretrain_distill.core.errors import ConfigError, RunStopped
from pretrain_distill.core.lr_schedule import build_lr_scheduler
from pretrain_distill.core.metrics_log import MetricsLogger
from pretrain_distill.core.rank_watch import RankWatch, watching_ranks
from pretrain_distill.core.run_lock import lock_output_dir
from pretrain_distill.core.seeds import derive_seed
from pretrain_distill.data import DynamicMasker, build_dataloader
from pretrain_distill.data.manifest import check_tokenizer, load_manifest
from pretrain_distill.engine.checkpoint import CheckpointStore, set_aside
from pretrain_distill.engine.deepspeed_config import build_deepspeed_config, clips_on_device
from pretrain_distill.engine.evaluate import evaluate, load_validation_batches, validation_dir
from pretrain_distill.engine.resume import check_resume_config, resolve_resume
from pretrain_distill.engine.signals import PreemptionFlag
from pretrain_distill.engine.speed import compile_layers
from pretrain_distill.engine.state import TrainState, deepspeed_source, load_checkpoint, save_checkpoint
from pretrain_distill.engine.summary import trainer_summary
from pretrain_distill.models import (
    build_student_from_config,
    build_teacher,
    special_token_ids,
    teacher_tokenizer,
)
from pretrain_distill.objectives import Distiller
from pretrain_distill.run_config import RunConfig
from pretrain_distill.vocab import cut_student, run_vocab


class Preempted(RunStopped):
    """A preemption signal arrived; a checkpoint was saved and the run stopped (the CLI exits 75)."""

    def __init__(self, signal_name: str, checkpoint: Path) -> None:
        super().__init__(f"{signal_name} received: saved {checkpoint}; rerun the same command to continue")
        self.checkpoint = checkpoint


class NonFiniteLossError(RuntimeError):
    """The loss became NaN/inf more often than ``train.nan_skip_budget`` allows."""


def mask_seed(seed: int, micro_step: int, rank: int) -> int:
    """Seed of the MLM masking generator for one micro-batch: a function of (seed, micro_step, rank) only."""
    return derive_seed(seed, micro_step, rank)


def resolve_init_from(path: str) -> str:
    """``student.init_from`` as a model directory: a HF model dir or weights file as given, a checkpoint
    dir -> its ``student/``, a run dir -> its ``export/`` (or its newest checkpoint's ``student/``)."""
    if not path:
        return path
    candidate = Path(path)
    if candidate.is_file() or (candidate / "config.json").is_file():
        return str(candidate)
    if (candidate / "student" / "config.json").is_file():
        return str(candidate / "student")
    if (candidate / "export" / "config.json").is_file():
        return str(candidate / "export")
    latest = CheckpointStore(candidate / "checkpoints", keep_last=1).latest()
    if latest is not None:
        return str(latest / "student")
    raise ConfigError(
        f"student.init_from: {path} is neither a model directory, a checkpoint, nor a run directory with an "
        "export or a complete checkpoint"
    )


def total_steps(cfg: RunConfig, batches_per_epoch: int) -> int:
    """Optimizer steps of the run: ``max_steps`` when set, else ``epochs`` over the shards."""
    if cfg.train.max_steps > 0:
        return cfg.train.max_steps
    steps = math.floor(cfg.train.epochs * batches_per_epoch / cfg.train.grad_accum)
    if steps < 1:
        raise ConfigError(
            f"train.epochs={cfg.train.epochs} over {batches_per_epoch} batches per rank and epoch gives no "
            "optimizer step: more data, more epochs, or a smaller micro batch / grad_accum"
        )
    return steps


def _param_groups(module: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: no weight decay on biases and LayerNorm weights (1-d parameters)."""
    params = [p for p in module.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]


def _memory_gb(device: torch.device) -> dict[str, float]:
    if device.type == "cuda":
        return {"gpu_mem_gb": torch.cuda.max_memory_allocated(device) / 2**30}
    return {"cpu_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def _total_grad_norm(module: torch.nn.Module) -> torch.Tensor:
    """L2 norm of all gradients of ``module`` (before clipping, as DeepSpeed reports it), on the device."""
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    return torch.nn.utils.get_total_norm(grads) if grads else torch.zeros(())


@dataclass
class _StepRecord:
    """What one optimizer step left behind, unread, on the device: per micro-batch, this rank's loss
    terms, the number of ranks whose loss was non-finite, and this rank's real tokens."""

    step: int  # the step's 0-based index when it ran
    micro_step: int  # its first micro-batch's index
    rows: torch.Tensor  # [grad_accum, n_terms + 2]: the terms, then non-finite ranks, then tokens


class _Interval:
    """The micro-batches since the last log line.

    Steps append a :class:`_StepRecord` to ``pending`` without reading anything; at a boundary (log
    line, checkpoint, stop) :meth:`Trainer._settle` reads them all at once and folds the good ones into
    the host-side sums below (loss term sums and micro-batch count of this rank, global tokens).
    """

    def __init__(self) -> None:
        self.pending: list[_StepRecord] = []
        self.keys: list[str] = []
        self.reset()

    def reset(self) -> None:
        self.terms: dict[str, float] = {}
        self.count = 0
        self.tokens = 0
        self.wait = 0.0
        self.start = time.perf_counter()


class _Marks:
    """The last steps that were logged, validated and saved (and the checkpoint saved last)."""

    def __init__(self, step: int, resumed_from: Path | None) -> None:
        self.logged = self.evaluated = step
        self.saved = step if resumed_from is not None else -1
        self.saved_path = resumed_from


class Trainer:
    """One distillation run; :func:`train` is the entry point.

    ``watch`` (a :class:`RankWatch`) starts watching the other ranks as soon as the process group
    exists. The output directory is locked (rank 0) from before anything is written to the end of
    :meth:`fit` (:meth:`close`).
    """

    def __init__(self, cfg: RunConfig, watch: RankWatch | None = None) -> None:
        self.cfg = cfg
        self.dist: DistEnv = detect_env()
        self.device = resolve_device(cfg.train.device, self.dist.local_rank)
        ds_config = build_deepspeed_config(cfg.train, self.dist.world_size, self.device)
        init_distributed(self.dist, self.device)
        if watch is not None:
            watch.start()
        self._find_checkpoint(ds_config)
        self._load_inputs()  # cheap, and where the usual mistakes are: before the models
        self.lock = lock_output_dir(cfg.train.output_dir, "train", self.dist)
        try:
            self._build_distiller()
            self._build_engine(ds_config)
            self._start_or_resume()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Give up the output directory's lock (the run is over, or failed); idempotent."""
        self.lock.release()

    def _find_checkpoint(self, ds_config: dict[str, Any]) -> None:
        """The checkpoint this run continues (``train.resume``), checked to belong to the same run."""
        cfg = self.cfg
        self.run_dir = Path(cfg.train.output_dir)
        self.store = CheckpointStore(self.run_dir / "checkpoints", cfg.train.keep_last)
        self.resume_from = resolve_resume(cfg.train.resume, self.store)
        self.resume_changes = (
            check_resume_config(self.resume_from, cfg) if self.resume_from is not None else []
        )
        self.resume_source = deepspeed_source(self.resume_from, ds_config, self.dist, self.run_dir)

    def _load_inputs(self) -> None:
        """Tokenizer, training stream (checked against the tokenizer), the student's vocabulary (pruned or
        not), masker and validation batches."""
        cfg = self.cfg
        self.tokenizer = teacher_tokenizer(cfg.teacher)
        self.loader = build_dataloader(
            cfg.data, cfg.train.micro_batch_size, self.dist.rank, self.dist.world_size, cfg.train.seed
        )
        manifest = load_manifest(cfg.data.shards)
        check_tokenizer(manifest, self.tokenizer)
        self.init_from = resolve_init_from(cfg.student.init_from)
        saved = [self.resume_from / "student"] if self.resume_from is not None else []
        if self.init_from and Path(self.init_from).is_dir():
            saved.append(Path(self.init_from))
        self.vocab = run_vocab(cfg.student, cfg.data, self.tokenizer, manifest, saved)
        self.masker = DynamicMasker(
            self.tokenizer,
            probability=cfg.data.mlm_probability,
            replacement_ids=self.vocab.kept if self.vocab is not None else None,
        )
        self.validation = _validation_batches(cfg, self.dist, manifest)

    def _build_distiller(self) -> None:
        """Teacher, student (``student.init_from`` resolved first) and the Distiller, the same on every rank."""
        cfg = self.cfg
        student_cfg = replace(cfg.student, init_from=self.init_from)
        torch.manual_seed(cfg.train.seed)  # identical student init and maps on every rank
        needs_teacher_head = cfg.objective.weights.get("od", 0) > 0
        teacher = build_teacher(cfg.teacher, self.device, needs_mlm_head=needs_teacher_head)
        student = build_student_from_config(student_cfg, teacher, special_token_ids(self.tokenizer))
        if self.vocab is not None:
            cut_student(student, self.vocab)
        self.distiller = Distiller(cfg.objective, student, teacher, self.vocab)
        compile_layers(self.distiller, cfg.train.compile)
        self.total_steps = total_steps(cfg, len(self.loader))

    def _build_engine(self, ds_config: dict[str, Any]) -> None:
        """AdamW (fused), the LR schedule and the DeepSpeed engine around the Distiller."""
        # deepspeed is heavy (seconds to import, op checks): loaded once the inputs are known to be good.
        import deepspeed

        cfg = self.cfg
        optimizer = torch.optim.AdamW(
            _param_groups(self.distiller, cfg.train.weight_decay),
            lr=cfg.train.lr,
            betas=tuple(cfg.train.betas),
            eps=cfg.train.eps,
            fused=True,  # its found_inf input lets the non-finite guard skip a step without a sync
        )
        self.adamw = optimizer
        scheduler = build_lr_scheduler(optimizer, self.total_steps, cfg.train.warmup_ratio)
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=self.distiller, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config
        )
        # RNG ownership: the global torch RNG belongs to the model (dropout; differs per rank) and is
        # saved per rank; masking, the loader (its own DataLoader generator) and random mappings draw
        # from generators seeded by their counters, so nothing else shifts the dropout stream.
        torch.manual_seed(cfg.train.seed + self.dist.rank)
        # DeepSpeed records the global grad norm in its ZeRO / bf16 / fp16 optimizers, not for plain
        # fp32 ZeRO-0: there we measure it ourselves (grads are all-reduced by then, so it is global).
        self.measure_grad_norm = not (
            self.engine.zero_optimization() or self.engine.bfloat16_enabled() or self.engine.fp16_enabled()
        )
        self.grad_norm: torch.Tensor | None = None
        if clips_on_device(ds_config) and cfg.train.grad_clip > 0:
            optimizer.register_step_pre_hook(self._clip_on_device)

    def _clip_on_device(self, optimizer: torch.optim.Optimizer, *_: Any) -> None:
        """Before each ZeRO-1/2 AdamW step: DeepSpeed's gradient clipping, computed on the device.

        DeepSpeed has reduced the gradients into this rank's fp32 partition and measured their global
        norm (a device tensor) when it calls the optimizer; its own clipping would then check that norm
        on the host. The same scale is applied here without a read, and a non-finite norm joins the
        step's ``found_inf`` (the update is skipped on the device, as for a non-finite loss).
        """
        norm = self.engine.optimizer._global_grad_norm  # set by DeepSpeed before it calls the optimizer
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        combined = ((norm + 1e-6) / self.cfg.train.grad_clip).clamp(min=1.0)  # DeepSpeed's formula
        if grads:
            torch._foreach_mul_(grads, 1.0 / combined.to(grads[0].device))
        bad = (~torch.isfinite(norm)).float().to(optimizer.found_inf.device)
        optimizer.found_inf = torch.maximum(optimizer.found_inf, bad)

    def _start_or_resume(self) -> None:
        """Restore the checkpoint's state, or start the run directory (config, tokenizer) on rank 0."""
        cfg = self.cfg
        self.state = TrainState()
        if self.resume_from is not None:
            self.state = load_checkpoint(
                self.resume_from, self.engine, self.loader, self.dist, cfg.train.seed, self.resume_source
            )
        elif self.dist.is_main:
            if cfg.train.resume == "overwrite":
                set_aside(self.run_dir)  # before anything of the new run is written
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.run_dir / "config.yaml")
            self.tokenizer.save_pretrained(self.run_dir / "tokenizer")
        barrier()

    # ------------------------------------------------------------------------------------ the loop

    def _batches(self):
        """Micro-batches forever, advancing the epoch (loader order and random mapping) at each pass."""
        self.loader.set_epoch(self.state.epoch)
        self.distiller.set_epoch(self.state.epoch)
        while True:
            yield from self.loader
            self.state.epoch += 1
            self.loader.set_epoch(self.state.epoch)
            self.distiller.set_epoch(self.state.epoch)

    def _micro_step(self, batch: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Forward one micro-batch: its loss terms, and its real-token count summed from the loader's CPU
        mask (a CPU tensor). The mask and the MLM draw stay on the host, where the Distiller decides
        padding and the positions to score without waiting for the device; only the ids move."""
        input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]
        labels = None
        if self.distiller.needs_masking:
            generator = torch.Generator()  # drawn on the host, like the rest of the batch
            generator.manual_seed(mask_seed(self.cfg.train.seed, self.state.micro_step, self.dist.rank))
            input_ids, labels = self.masker(input_ids, attention_mask, generator)
        losses = self.engine(input_ids.to(self.device, non_blocking=True), attention_mask, labels)
        return losses, attention_mask.sum()

    def _train_step(self, batches, interval: _Interval) -> None:
        """One optimizer step over ``grad_accum`` micro-batches, with no host-device synchronisation.

        Each micro-batch's loss terms stay on the device. At the accumulation boundary the step's
        non-finite flags are summed over ranks (a device collective) and handed to the fused AdamW as
        ``found_inf``: if any rank's loss was NaN/inf, the update is skipped on the device (weights,
        moments and Adam's step count unchanged, as with a GradScaler). The host learns of it at the
        next boundary (:meth:`_settle`), which counts, warns or stops, and redoes the step.
        """
        terms, tokens = [], []
        first_micro = self.state.micro_step
        for index in range(self.cfg.train.grad_accum):
            start = time.perf_counter()
            batch = next(batches)
            interval.wait += time.perf_counter() - start
            losses, local_tokens = self._micro_step(batch)
            interval.keys = list(losses)
            terms.append(torch.stack([v.detach().float() for v in losses.values()]))
            tokens.append(local_tokens)
            self.state.micro_step += 1
            self.engine.backward(losses["loss"])
            if index == self.cfg.train.grad_accum - 1:  # DeepSpeed's accumulation boundary
                step_terms = torch.stack(terms)
                loss_column = step_terms[:, interval.keys.index("loss")]
                nonfinite = all_reduce_sum((~torch.isfinite(loss_column)).float())
                self.adamw.found_inf = (nonfinite.sum() > 0).float()
                if self.measure_grad_norm:
                    self.grad_norm = _total_grad_norm(self.distiller)
            self.engine.step()
        tokens = torch.stack(tokens).to(self.device, torch.float32, non_blocking=True)
        rows = torch.cat([step_terms, nonfinite[:, None], tokens[:, None]], 1)
        interval.pending.append(_StepRecord(self.state.step, first_micro, rows))
        self.state.step += 1

    def _settle(self, interval: _Interval) -> None:
        """Read the steps since the last boundary (one synchronisation) and act on their non-finite losses.

        The guard keeps its meaning: a step in which some rank's loss was non-finite does not count (its
        update was skipped on the device, see :meth:`_train_step`), so the run redoes it with the next
        micro-batches; each non-finite micro-batch counts against ``train.nan_skip_budget``, past which
        :class:`NonFiniteLossError` names the step, the micro-batch and the loss terms. The step counter
        and the LR schedule are wound back by the skipped steps.
        """
        if not interval.pending:
            return
        rows = torch.cat([r.rows for r in interval.pending]).cpu().double().tolist()
        keys = interval.keys
        skipped, local_tokens = 0, 0
        for record in interval.pending:
            mine, rows = rows[: len(record.rows)], rows[len(record.rows) :]
            if not any(row[-2] > 0 for row in mine):
                for row in mine:
                    for key, value in zip(keys, row):
                        interval.terms[key] = interval.terms.get(key, 0.0) + value
                interval.count += len(mine)
                local_tokens += sum(row[-1] for row in mine)
                continue
            for offset, row in enumerate(mine):
                if row[-2] > 0:
                    self._on_non_finite(record.step - skipped + 1, record.micro_step + offset, keys, row)
            skipped += 1
        interval.pending.clear()
        tokens = all_reduce_sum(torch.tensor([float(local_tokens)], dtype=torch.float64, device=self.device))
        tokens = int(tokens.cpu().tolist()[0])
        interval.tokens += tokens
        self.state.tokens += tokens
        if skipped:
            self.state.step -= skipped
            self.scheduler.last_epoch = self.state.step - 1  # the schedule counts applied steps only
            self.scheduler.step()

    def _on_non_finite(self, step: int, micro_step: int, keys: list[str], row: list[float]) -> None:
        self.state.nan_skipped += 1
        terms = ", ".join(f"{k}={v:.6g}" for k, v in zip(keys, row))
        message = (
            f"non-finite loss at step {step} (micro-batch {micro_step}, rank-local terms: {terms}); skipped "
            f"{self.state.nan_skipped} of train.nan_skip_budget={self.cfg.train.nan_skip_budget}"
        )
        if self.state.nan_skipped > self.cfg.train.nan_skip_budget:
            raise NonFiniteLossError(message)
        if self.dist.is_main:
            warnings.warn(message, stacklevel=2)

    def _log(self, interval: _Interval, lr: float, grad_norm: Any, logger: MetricsLogger) -> dict:
        keys = sorted(interval.terms)
        sums = torch.tensor([interval.terms[k] for k in keys] + [float(interval.count)], dtype=torch.float64)
        sums = all_reduce_sum(sums.to(self.device)).cpu().tolist()
        count = sums[-1]
        elapsed = max(time.perf_counter() - interval.start, 1e-9)
        losses = {("loss" if k == "loss" else f"loss_{k}"): v / count for k, v in zip(keys, sums)}
        metrics = {
            **losses,
            "lr": lr,
            "grad_norm": float(grad_norm) if grad_norm is not None else float("nan"),
            "tokens_per_s": interval.tokens / elapsed,
            "loader_wait_s": interval.wait,
            "epoch": self.state.epoch,
            "tokens": self.state.tokens,
            **_memory_gb(self.device),
        }
        logger.log(self.state.step, metrics)
        self.state.last_losses = losses
        return metrics

    def fit(self, preemption: PreemptionFlag) -> Path:
        """Train to ``total_steps`` (from the resumed position); returns the run directory.

        Between boundaries the loop never waits for the device: loss terms, non-finite flags and token
        counts are read once per log line, checkpoint or stop (:meth:`_settle`). ``preemption`` is
        agreed over ranks at every optimizer step on the host (:func:`any_rank`); once set (on any rank),
        the step is finished, a checkpoint saved and :class:`Preempted` raised.
        """
        logger = MetricsLogger(
            self.run_dir / "logs",
            enabled=self.dist.is_main,
            resume_step=self.state.step,
            report_to=self.cfg.train.report_to,
            run_name=self.run_dir.name,
            config=to_dict(self.cfg),
        )
        progress = tqdm(
            total=self.total_steps,
            initial=self.state.step,
            disable=not self.dist.is_main,
            unit="step",
            dynamic_ncols=True,
            desc="distill",
            mininterval=0.5 if sys.stderr.isatty() else 30.0,  # batch logs (SLURM): a line per 30 s
        )
        interval = _Interval()
        batches = self._batches()
        self.engine.train()
        marks = _Marks(self.state.step, self.resume_from)
        try:
            while self.state.step < self.total_steps:
                self.distiller.set_step(self.state.step)
                lr = self.optimizer.param_groups[0]["lr"]
                self._train_step(batches, interval)
                stop = any_rank(preemption.requested)
                self._after_step(stop, lr, interval, marks, logger, progress)
                if stop:
                    name = preemption.received.name if preemption.received else "stop"
                    raise Preempted(name, marks.saved_path)
            if marks.saved != self.state.step:  # resumed at the end, or total_steps not a save step
                self.save()
        finally:
            progress.close()
            logger.close()
            self.close()
        barrier()
        return self.run_dir

    def _after_step(
        self, stop: bool, lr: float, interval: _Interval, marks: _Marks, logger: MetricsLogger, progress: Any
    ) -> None:
        """What is due after an optimizer step: read the steps since the last boundary, log, validate,
        checkpoint (always when ``stop``). Time spent validating and saving is not training time."""
        cfg = self.cfg.train
        step = self.state.step
        due_log = step % cfg.log_every == 0 or step == self.total_steps
        due_save = step % cfg.save_every == 0 or step == self.total_steps
        due_eval = bool(self.validation) and step % cfg.eval_every == 0
        if stop or due_log or due_save or due_eval:
            self._settle(interval)  # may wind the step back over skipped (non-finite) steps
            step = self.state.step
        progress.update(step - progress.n)
        if step > marks.logged and (step % cfg.log_every == 0 or step == self.total_steps):
            metrics = self._log(interval, lr, self._global_grad_norm(), logger)
            progress.set_postfix(loss=f"{metrics['loss']:.4g}", tok_s=f"{metrics['tokens_per_s']:.3g}")
            interval.reset()
            marks.logged = step
        if self.validation and step > marks.evaluated and step % cfg.eval_every == 0:
            eval_start = time.perf_counter()
            logger.log(step, self.validate())
            marks.evaluated = step
            interval.start += time.perf_counter() - eval_start  # tokens/s counts training only
        if step > marks.saved and (stop or step % cfg.save_every == 0 or step == self.total_steps):
            save_start = time.perf_counter()
            marks.saved_path = self.save()
            marks.saved = step
            interval.start += time.perf_counter() - save_start  # tokens/s counts training time only

    def validate(self) -> dict[str, float]:
        """``val_*`` losses on the held-out batches (all ranks take part; see engine/evaluate.py)."""
        return evaluate(
            self.distiller,
            self.validation,
            self.masker,
            self.device,
            self.cfg.train.seed,
            forward=self.engine,
            reduce=all_reduce_sum,
        )

    def _global_grad_norm(self) -> float | None:
        return self.grad_norm if self.measure_grad_norm else self.engine.get_global_grad_norm()

    def save(self) -> Path:
        return save_checkpoint(
            self.store,
            self.engine,
            self.distiller.student,
            self.loader,
            self.state,
            self.cfg,
            self.dist,
            self.vocab,
        )


def _validation_batches(cfg: RunConfig, dist: DistEnv, manifest: dict[str, Any]) -> list:
    """This rank's validation batches; empty when ``train.eval_every`` is 0 or there are no held-out shards."""
    path = validation_dir(cfg.data)
    if not cfg.train.eval_every or path is None:
        return []
    return load_validation_batches(
        path,
        cfg.train.micro_batch_size,
        cfg.train.eval_batches,
        dist.rank,
        dist.world_size,
        cfg.train.seed,
        expect_tokenizer=manifest["tokenizer"]["sha256"],
    )


def train(cfg: RunConfig, on_end: Callable[[Path], object] | None = None) -> Path:
    """Run (or resume, per ``train.resume``) a distillation; returns the run directory.

    ``on_end(run_dir)`` runs on the main rank after the final checkpoint when ``train.export`` is set:
    the end-of-run hook (``pretrain-distill train`` passes :func:`pretrain_distill.export.end_of_run`;
    the engine does not know about export formats).

    Raises :class:`Preempted` after saving a checkpoint on SIGTERM / SIGUSR1, and
    :class:`NonFiniteLossError` when non-finite losses exceed ``train.nan_skip_budget``.
    """
    # Signal handlers go in before the slow start-up, so no preemption signal is lost; the watch turns
    # the failure another rank's death causes here into one line naming that rank.
    with launcher_env_scope(), PreemptionFlag() as preemption, watching_ranks(detect_env()) as watch:
        trainer = Trainer(cfg, watch)
        if trainer.dist.is_main:
            print(trainer_summary(trainer), flush=True)
        run_dir = trainer.fit(preemption)
        if on_end is not None and cfg.train.export and trainer.dist.is_main:
            on_end(run_dir)
        barrier()
        return run_dir
