"""The model card (README.md) of an export, written with ``huggingface_hub.ModelCard``.

Metadata: ``base_model`` (the teacher's hub name when it has one), ``license`` (the teacher's, read from
its own card, unless given), ``library_name``, ``pipeline_tag``, tags. Body: teacher, student shape and
parameter count, objective and its settings, data (sources and corpus tokens from the shards'
manifest), tokens and steps trained, the exported checkpoint, the commands, final losses.

Local paths are named as :mod:`pretrain_distill.core.public_paths` publishes them (the teacher by its
hub id or folder name, the data by source kind and file name, the checkpoint relative to the run),
unless ``full_paths``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard, ModelCardData

from pretrain_distill.core.public_paths import public_name, public_text
from pretrain_distill.export.source import ExportSource

PIPELINE = {
    "transformers": "feature-extraction",
    "sentence-transformers": "sentence-similarity",
    "onnx": "feature-extraction",
}


def _fmt(value: Any) -> str:
    return f"{value:.5g}" if isinstance(value, float) else str(value)


def objective_settings(objective: dict[str, Any]) -> str:
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


def teacher_license(teacher_dir: Path | None) -> str | None:
    """The ``license`` of the teacher's own model card, when it has one."""
    card = teacher_dir / "README.md" if teacher_dir is not None else None
    if card is None or not card.is_file():
        return None
    return ModelCard.load(card).data.license


def _manifest(shards: str | None) -> dict[str, Any]:
    path = Path(shards or "") / "manifest.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _count(n: int | None) -> str:
    return "unknown" if n is None else f"{n:,} ({n / 1e6:.2f}M)"


def _student_line(
    student: dict[str, Any], encoder_parameters: int, stored_values: int, mlm_head: str | None, full: bool
) -> str:
    shape = ", ".join(
        f"{k}={student[k]}"
        for k in ("preset", "layers", "heads", "hidden", "ffn")
        if student.get(k) is not None
    )
    init = f"`{student.get('init')}`" + (
        f", from `{student['init_from'] if full else public_name(student['init_from'])}`"
        if student.get("init_from")
        else ""
    )
    head = {
        None: "the base encoder (no MLM head)",
        "trained": "with the MLM head the objective trained",
        "untrained": "with an MLM head this run did NOT train (kept on request; fill-mask is not meaningful)",
    }[mlm_head]
    return (
        f"- **Student**: {shape}; init {init}; {encoder_parameters:,} encoder parameters "
        f"(embeddings + layers), {stored_values:,} values stored; {head}"
    )


def _data_line(data: dict[str, Any], full: bool) -> str:
    manifest = _manifest(data.get("shards"))
    shown = str if full else public_text
    sources = (
        ", ".join(f"`{shown(s)}`" for s in manifest.get("sources", [])) or f"`{shown(data.get('shards'))}`"
    )
    corpus = manifest.get("totals", {}).get("tokens")
    size = (
        f"{_count(corpus)} tokens in the corpus"
        if corpus is not None
        else "corpus size unknown (no manifest)"
    )
    return f"- **Data**: {sources}; {size}"


def _training_lines(source: ExportSource, full: bool) -> list[str]:
    train, state = source.config.get("train", {}), source.metadata.get("state", {})
    world = source.metadata.get("world_size", 1)
    global_batch = train.get("micro_batch_size", 0) * train.get("grad_accum", 1) * world
    return [
        f"- **Training**: {source.step} optimizer steps, {state.get('epoch')} completed epochs, "
        f"{_count(state.get('tokens'))} tokens seen; global batch {global_batch} "
        f"(micro {train.get('micro_batch_size')} x accumulation {train.get('grad_accum')} x {world} ranks), "
        f"peak LR {train.get('lr')}, precision {train.get('precision')}",
        f"- **Checkpoint**: `{source.checkpoint if full else source.in_run(source.checkpoint)}`, "
        f"step {source.step}, written {source.written_at}",
    ]


def _sections(source: ExportSource, fmt: str, command: str) -> list[str]:
    """Commands, final losses and how to load the export."""
    losses = source.metadata.get("state", {}).get("last_losses", {})
    if fmt == "sentence-transformers":
        use = ["from sentence_transformers import SentenceTransformer", "model = SentenceTransformer(PATH)"]
    elif fmt == "onnx":
        use = [
            "import onnxruntime, transformers",
            "tokenizer = transformers.AutoTokenizer.from_pretrained(PATH)",
            'session = onnxruntime.InferenceSession(f"{PATH}/model.onnx")  # or model_quantized.onnx (int8)',
            'batch = tokenizer(["a sentence"], return_tensors="np")',
            "hidden = session.run(None, {i.name: batch[i.name] for i in session.get_inputs()})[0]",
        ]
    else:
        use = [
            "from transformers import AutoModel, AutoModelForSequenceClassification",
            "encoder = AutoModel.from_pretrained(PATH)",
            "classifier = AutoModelForSequenceClassification.from_pretrained(PATH, num_labels=2)",
        ]
    return [
        "## Commands",
        "",
        "```",
        "pretrain-distill train distill_config.yaml   # the run (its resolved config is in this directory)",
        command,
        "```",
        "",
        "## Final losses (last logged step)",
        "",
        "| term | value |",
        "|---|---|",
        *(f"| {k} | {_fmt(v)} |" for k, v in sorted(losses.items())),
        "",
        "## Use",
        "",
        "```python",
        *use,
        "```",
    ]


def model_card(
    source: ExportSource,
    *,
    teacher_name: str,
    teacher_dir: Path | None,
    hub_id: str | None,
    fmt: str,
    mlm_head: str | None,
    encoder_parameters: int,
    stored_values: int,
    license: str | None,
    command: str,
    full_paths: bool = False,
) -> ModelCard:
    """The card of one export (see the module docstring); ``mlm_head``: None, "trained" or "untrained"."""
    config = source.config
    objective = config.get("objective", {})
    terms = ", ".join(f"{k} x {_fmt(w)}" for k, w in objective.get("weights", {}).items())
    licence_note = "given at export" if license else "the teacher's; check the training data's terms too"
    license = license or teacher_license(teacher_dir)
    card_data = ModelCardData(
        base_model=hub_id,
        license=license,
        library_name="sentence-transformers" if fmt == "sentence-transformers" else "transformers",
        pipeline_tag="fill-mask" if mlm_head else PIPELINE[fmt],
        tags=["distillation", "task-agnostic-distillation", "pretrain-distill"],
    )
    lines = [
        "# Distilled student",
        "",
        "A task-agnostic distillation of the teacher below with `pretrain-distill` (setup of Udagawa et al. "
        "2023), exported for fine-tuning.",
        "",
        f"- **Teacher (base model)**: `{teacher_name if full_paths else public_name(teacher_name)}`"
        + (f" (local copy `{teacher_dir}`)" if teacher_dir and full_paths else ""),
        _student_line(config.get("student", {}), encoder_parameters, stored_values, mlm_head, full_paths),
        f"- **Objective**: {terms}; {objective_settings(objective)}",
        _data_line(config.get("data", {}), full_paths),
        *_training_lines(source, full_paths),
        f"- **Licence**: {license} ({licence_note})"
        if license
        else "- **Licence**: not stated by the teacher (check the teacher's and the data's terms)",
        "",
        *_sections(source, fmt, command),
    ]
    return ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n")
