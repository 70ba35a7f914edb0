"""The start-up summary ``pretrain-distill train`` prints before the first step: what will be trained,
from what, on how much data, and where it goes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pretrain_distill.models.families import family_of
from pretrain_distill.models.students import encoder_parameter_count, spec_of
from pretrain_distill.run_config import RunConfig
from pretrain_distill.vocab import StudentVocab


def startup_summary(
    cfg: RunConfig,
    student: Any,
    mapping: Any,
    total_steps: int,
    world_size: int,
    manifest: dict[str, Any],
    resumed_step: int = 0,
    resume_changes: Sequence[str] = (),
    vocab: StudentVocab | None = None,
) -> str:
    """Teacher, student (shape, parameter count, init, family, pruned vocabulary), objective, mapping,
    global batch, steps, tokens, output, and the settings a resumed run changed."""
    global_batch = cfg.train.micro_batch_size * cfg.train.grad_accum * world_size
    totals = manifest.get("totals", {})
    per_sequence = totals.get("tokens", 0) / max(totals.get("sequences", 0), 1)
    tokens = total_steps * global_batch * per_sequence
    weights = ", ".join(f"{k} x {w:g}" for k, w in cfg.objective.weights.items())
    shape = spec_of(student.config).as_list()
    init = cfg.student.init_from or cfg.student.init
    lines = [
        f"teacher    {cfg.teacher.path}",
        f"student    [layers, heads, hidden, ffn] = {shape}, {encoder_parameter_count(student) / 1e6:.2f}M "
        f"encoder parameters, init {init}, family {family_of(student.config).name}",
        *(
            [
                f"vocab      {vocab.size:,} of the teacher's {vocab.teacher_size:,} tokens kept; "
                f"{100 * vocab.stats.get('unknown_share', 0):.3f}% of the corpus tokens read as unknown"
            ]
            if vocab is not None
            else []
        ),
        f"objective  {weights}",
        f"mapping    {list(map(list, mapping)) if mapping is not None else '- (no hs term)'}"
        + (
            f" ({cfg.objective.mapping})"
            if isinstance(cfg.objective.mapping, str) and mapping is not None
            else ""
        ),
        f"batch      {global_batch} sequences per step = {cfg.train.micro_batch_size} micro x "
        f"{cfg.train.grad_accum} accumulation x {world_size} ranks",
        f"length     {total_steps} steps"
        + (f" (resuming at {resumed_step})" if resumed_step else "")
        + f", ~{tokens:,.0f} tokens ({per_sequence:.0f} per sequence in {cfg.data.shards})",
        f"output     {cfg.train.output_dir}",
    ]
    if resume_changes:
        lines.append(f"changed    {'; '.join(resume_changes)} (since the checkpoint)")
    return "\n".join(lines)


def trainer_summary(trainer: Any) -> str:
    """:func:`startup_summary` of a built :class:`~pretrain_distill.engine.trainer.Trainer`."""
    distiller = trainer.distiller
    return startup_summary(
        trainer.cfg,
        distiller.student,
        distiller.mapping,
        trainer.total_steps,
        trainer.dist.world_size,
        trainer.loader.dataset.manifest,
        trainer.state.step,
        trainer.resume_changes,
        trainer.vocab,
    )
