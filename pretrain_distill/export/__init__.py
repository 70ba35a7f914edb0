"""Write a run's student as a model directory for fine-tuning or sentence embeddings
(``pretrain-distill export``, whose ``--help`` lists the formats; the engine's end-of-run hook).

Every format holds the tokenizer, the resolved run config (distill_config.yaml) and a model card
(README.md), both naming local paths by their last component (``card_paths="full"``: as they are). The
inputs are checked before anything is written; an existing output directory is replaced only when it
is an earlier export, and only once the new one is complete.
"""

from __future__ import annotations

import math
import shlex
import sys
from pathlib import Path

from safetensors import safe_open

from pretrain_distill.core.assets import TEACHER_HUB_ID, AssetError, teacher_path
from pretrain_distill.core.files import check_replaceable, staged_dir
from pretrain_distill.core.public_paths import PATH_STYLES, public_text
from pretrain_distill.export.encoder import mlm_head_trained, write_transformers
from pretrain_distill.export.hub import push_to_hub as push
from pretrain_distill.export.model_card import model_card
from pretrain_distill.export.onnx import onnx_values, write_onnx_format
from pretrain_distill.export.sentence_transformers import write_sentence_transformers
from pretrain_distill.export.source import ExportSource, resolve_source
from pretrain_distill.models.students import encoder_parameter_count

FORMATS = ("transformers", "sentence-transformers", "onnx")
QUANTIZE = ("int8",)
EXPORT_DIR = "export"  # a run's default export: <run_dir>/export
_MARKER = "distill_config.yaml"  # every export holds it: an existing directory with it may be replaced


def _check_out(out: Path, source: ExportSource) -> None:
    protected = {source.run_dir.resolve(), source.checkpoint.resolve(), *source.run_dir.resolve().parents}
    if out.resolve() in protected:
        raise ValueError(f"--out {out}: is the run directory, the checkpoint or above them; choose another")
    check_replaceable(out, _MARKER, "export")


def _teacher(config: dict) -> tuple[str, Path | None, str | None]:
    """(name for the card, local directory or None, hub id or None) of the run's teacher."""
    path = config.get("teacher", {}).get("path", "")
    if path == "minilm":
        try:
            return TEACHER_HUB_ID, teacher_path(), TEACHER_HUB_ID
        except AssetError:
            return TEACHER_HUB_ID, None, TEACHER_HUB_ID
    local = Path(path)
    if local.is_dir():
        return str(local.resolve()), local.resolve(), None  # the card names it by its folder
    return path, None, path  # a hub name


def export_run(
    run_dir: str | Path,
    checkpoint: str | Path | None = None,
    out: str | Path | None = None,
    fmt: str = "transformers",
    with_mlm_head: bool | None = None,
    license: str | None = None,
    push_to_hub: str | None = None,
    private: bool = False,
    quantize: str | None = None,
    card_paths: str = "names",
) -> Path:
    """Export the student of ``checkpoint`` (default: newest complete) to ``out`` (default
    ``run_dir/export``) in format ``fmt``; ``with_mlm_head=None`` keeps the head when it was trained;
    ``quantize="int8"`` (``onnx`` only) adds the dynamically quantized graph; ``card_paths``: how the card
    and the copied config name local paths (``names`` or ``full``)."""
    if fmt not in FORMATS:
        raise ValueError(f"export format {fmt!r}: expected one of {', '.join(FORMATS)}")
    if quantize is not None and (quantize not in QUANTIZE or fmt != "onnx"):
        raise ValueError(f"--quantize {quantize}: only --quantize int8, with --format onnx")
    if card_paths not in PATH_STYLES:
        raise ValueError(f"--card-paths {card_paths!r}: expected one of {', '.join(PATH_STYLES)}")
    source = resolve_source(run_dir, checkpoint)
    out = Path(out) if out is not None else source.run_dir / EXPORT_DIR
    _check_out(out, source)
    head_trained = mlm_head_trained(source.config)
    with_mlm_head = _keep_mlm_head(fmt, with_mlm_head, head_trained)
    print(f"export: {source.describe()} -> {out} ({fmt})", file=sys.stderr)
    with staged_dir(out) as staging:  # unique per export: two exports to one --out never share it
        _write_export(
            source, staging, out, fmt, with_mlm_head, head_trained, license, card_paths == "full", quantize
        )
    if push_to_hub:
        print(f"export: pushed to {push(out, push_to_hub, private=private)}", file=sys.stderr)
    return out


def _keep_mlm_head(fmt: str, asked: bool | None, head_trained: bool) -> bool:
    """Whether the export keeps the MLM head: as asked, else when the run trained it; never for
    sentence embeddings or ONNX."""
    if fmt in ("sentence-transformers", "onnx"):  # the base encoder, whatever the objective trained
        if asked:
            raise ValueError(f"--with-mlm-head: the {fmt} format holds the base encoder only")
        return False
    if asked is None:
        return head_trained
    if asked and not head_trained:
        print(
            "export: warning: keeping an MLM head this run did not train (fill-mask output is not meaningful)",
            file=sys.stderr,
        )
    return asked


def _write_export(
    source: ExportSource,
    staging: Path,
    out: Path,
    fmt: str,
    with_mlm_head: bool,
    head_trained: bool,
    license: str | None,
    full_paths: bool,
    quantize: str | None = None,
) -> None:
    """The model, the run config and the model card into ``staging`` (later published as ``out``)."""
    teacher_name, teacher_dir, hub_id = _teacher(source.config)
    if fmt == "sentence-transformers":
        model = write_sentence_transformers(source, staging, teacher_dir)
    elif fmt == "onnx":
        model = write_onnx_format(source, staging, quantize == "int8")
    else:
        model = write_transformers(source, staging, with_mlm_head)
    config = (source.checkpoint / "config.yaml").read_text()
    (staging / _MARKER).write_text(config if full_paths else public_text(config))
    card = model_card(
        source,
        teacher_name=teacher_name,
        teacher_dir=teacher_dir,
        hub_id=hub_id,
        fmt=fmt,
        mlm_head=("trained" if head_trained else "untrained") if with_mlm_head else None,
        encoder_parameters=encoder_parameter_count(model),
        stored_values=_stored_values(staging),
        license=license,
        command=_command(source, out, fmt, with_mlm_head, head_trained, license, full_paths, quantize),
        full_paths=full_paths,
    )
    card.save(staging / "README.md")


def _command(
    source: ExportSource,
    out: Path,
    fmt: str,
    with_head: bool,
    head_trained: bool,
    license: str | None,
    full_paths: bool,
    quantize: str | None = None,
) -> str:
    """The ``pretrain-distill export`` command that writes this export again (its paths as the card
    names them: relative to the run directory's parent unless ``full_paths``)."""
    if full_paths:
        run, checkpoint, target = str(source.run_dir), str(source.checkpoint), str(out)
    else:
        run, checkpoint, target = source.run_dir.name, source.in_run(source.checkpoint), source.in_run(out)
    argv = ["pretrain-distill", "export", run, "--checkpoint", checkpoint, "--out", target]
    argv += ["--format", fmt] if fmt != "transformers" else []
    argv += ["--quantize", quantize] if quantize else []
    if with_head != head_trained:
        argv.append("--with-mlm-head" if with_head else "--without-mlm-head")
    return shlex.join(argv + (["--license", license] if license else []))


def _stored_values(folder: Path) -> int:
    """Number of values in the directory's safetensors files (tied weights count once: stored once), or
    in its fp32 ONNX graph."""
    if (folder / "model.onnx").is_file():
        return onnx_values(folder / "model.onnx")
    total = 0
    for path in folder.glob("*.safetensors"):
        with safe_open(path, framework="pt") as f:
            total += sum(math.prod(f.get_slice(key).get_shape()) for key in f.keys())
    return total


def end_of_run(run_dir: Path) -> Path:
    """The engine's end-of-run hook: the default export of a finished run to ``<run_dir>/export``."""
    return export_run(run_dir)


__all__ = ["FORMATS", "QUANTIZE", "end_of_run", "export_run"]
