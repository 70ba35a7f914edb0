"""Write a run's student as a Hugging Face model directory, ready for fine-tuning:

  pretrain-distill export runs/distill                 # newest complete checkpoint -> runs/distill/export
  pretrain-distill export runs/distill --checkpoint runs/distill/checkpoints/step_00001000 --out my_model

The directory holds the student (config.json + model.safetensors, fp32, with its MLM head), the tokenizer,
the resolved run config (distill_config.yaml) and a model card (README.md) naming teacher, objective,
layer mapping, data, steps and final losses. Load it with ``AutoModel.from_pretrained(dir)``.
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path
from typing import Any

import yaml

from pretrain_distill.engine.checkpoint import CheckpointStore, verify_checkpoint


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="run directory (holds checkpoints/ and tokenizer/)")
    parser.add_argument(
        "--checkpoint", default=None, help="checkpoint directory (default: the newest complete)"
    )
    parser.add_argument("--out", default=None, help="output directory (default: <run_dir>/export)")


def run(args: argparse.Namespace) -> int:
    print(export_run(args.run_dir, checkpoint=args.checkpoint, out=args.out))
    return 0


def _fmt(value: Any) -> str:
    return f"{value:.5g}" if isinstance(value, float) else str(value)


def _objective_settings(objective: dict[str, Any]) -> str:
    """The settings of the objective's active terms only."""
    weights = objective.get("weights", {})
    parts = []
    if "hs" in weights:
        parts.append(f"layer mapping `{objective.get('mapping')}`")
    if "minilmv2" in weights or "direct_minilm" in weights:
        parts.append(f"teacher layer `{objective.get('teacher_layer')}`")
    if "minilmv2" in weights:
        parts.append(f"{objective.get('relation_heads')} relation heads")
    if "od" in weights:
        parts.append(
            f"temperature {objective.get('temperature')} over {objective.get('od_positions')} positions"
        )
    return "; ".join(parts) or "defaults"


def model_card(config: dict[str, Any], metadata: dict[str, Any]) -> str:
    """The README.md of an exported student, from the run config and the checkpoint's metadata."""
    state = metadata.get("state", {})
    teacher, student = config.get("teacher", {}), config.get("student", {})
    objective, train = config.get("objective", {}), config.get("train", {})
    terms = ", ".join(f"{k} x {_fmt(w)}" for k, w in objective.get("weights", {}).items())
    shape = ", ".join(
        f"{k}={student[k]}"
        for k in ("preset", "layers", "heads", "hidden", "ffn")
        if student.get(k) is not None
    )
    init = f"`{student.get('init')}`" + (
        f", from `{student['init_from']}`" if student.get("init_from") else ""
    )
    lines = [
        "---",
        "library_name: transformers",
        "tags: [distillation, task-agnostic, pretrain-distill]",
        "---",
        "# Distilled student",
        "",
        "Task-agnostic distillation with `pretrain-distill` (Udagawa et al. 2023 setup).",
        "",
        f"- **Teacher**: `{teacher.get('path')}`",
        f"- **Student**: {shape}; init {init}",
        f"- **Objective**: {terms}; {_objective_settings(objective)}",
        f"- **Data**: `{config.get('data', {}).get('shards')}`",
        f"- **Training**: {state.get('step')} optimizer steps, {state.get('epoch')} completed epochs, "
        f"{state.get('tokens')} tokens; micro batch {train.get('micro_batch_size')} x accumulation "
        f"{train.get('grad_accum')} x {metadata.get('world_size')} ranks, peak LR {train.get('lr')}, "
        f"precision {train.get('precision')}",
        "",
        "## Final losses (last logged step)",
        "",
        "| term | value |",
        "|---|---|",
        *(f"| {k} | {_fmt(v)} |" for k, v in sorted(state.get("last_losses", {}).items())),
        "",
        "Load it with `AutoModel.from_pretrained(<this dir>)`; the full run config is in `distill_config.yaml`.",
    ]
    return "\n".join(lines) + "\n"


def export_run(
    run_dir: str | Path, checkpoint: str | Path | None = None, out: str | Path | None = None
) -> Path:
    """Export the student of ``checkpoint`` (default: newest complete) to ``out`` (default ``run_dir/export``)."""
    run_dir = Path(run_dir)
    if checkpoint is None:
        checkpoint = CheckpointStore(run_dir / "checkpoints", keep_last=1).latest_verified()
        if checkpoint is None:
            raise FileNotFoundError(f"{run_dir}: no complete checkpoint under checkpoints/ to export")
    checkpoint = Path(checkpoint)
    metadata = verify_checkpoint(checkpoint)  # names a missing / truncated / altered file
    tokenizer_dir = run_dir / "tokenizer"
    if not tokenizer_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: no tokenizer/ directory (written when the run started)")
    out = Path(out) if out is not None else run_dir / "export"
    staging = out.with_name(f".tmp-{out.name}")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(checkpoint / "student", staging)
    for item in tokenizer_dir.iterdir():
        shutil.copy2(item, staging / item.name)
    shutil.copy2(checkpoint / "config.yaml", staging / "distill_config.yaml")
    config = yaml.safe_load((checkpoint / "config.yaml").read_text())
    (staging / "README.md").write_text(model_card(config, metadata))
    if out.exists():
        shutil.rmtree(out)
    os.replace(staging, out)
    return out
