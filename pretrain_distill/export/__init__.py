"""Write a run's student as a model directory for fine-tuning or sentence embeddings:

  pretrain-distill export runs/distill                 # newest complete checkpoint -> runs/distill/export
  pretrain-distill export runs/distill --checkpoint runs/distill/checkpoints/step_00001000 --out my_model
  pretrain-distill export runs/distill --format sentence-transformers --out my_embedder
  pretrain-distill export runs/distill --push-to-hub me/my-student

Formats:
  transformers            the base encoder (BertModel, RobertaModel, ...; fp32 safetensors) that
                          AutoModel / AutoModelForSequenceClassification load with only the new
                          classifier to initialise; the MLM head too when the objective trained it
                          (od, mlm) or with --with-mlm-head
  sentence-transformers   the base encoder + modules.json and the teacher's pooling (mean for
                          all-MiniLM-L6-v2), for sentence_transformers.SentenceTransformer(dir)

Both hold the tokenizer, the resolved run config (distill_config.yaml) and a model card (README.md:
teacher, student and parameter count, objective, data, tokens, steps, licence, commands). The export
says which checkpoint (step, time) it holds. The inputs are checked before anything is written; an
existing output directory is replaced only when it is an earlier export.
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import shutil
import sys
from pathlib import Path

from pretrain_distill.export.source import ExportSource, resolve_source

FORMATS = ("transformers", "sentence-transformers")
_MARKER = "distill_config.yaml"  # every export holds it: an existing directory with it may be replaced


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="run directory (holds checkpoints/ and tokenizer/)")
    parser.add_argument(
        "--checkpoint",
        default=None,
        help="checkpoint directory (default: the newest complete one whose sizes and checksums verify)",
    )
    parser.add_argument("--out", default=None, help="output directory (default: <run_dir>/export)")
    parser.add_argument("--format", choices=FORMATS, default="transformers", help="default: transformers")
    head = parser.add_mutually_exclusive_group()
    head.add_argument(
        "--with-mlm-head",
        dest="with_mlm_head",
        action="store_true",
        default=None,
        help="keep the MLM head even though the objective did not train it",
    )
    head.add_argument(
        "--without-mlm-head", dest="with_mlm_head", action="store_false", help="drop a trained MLM head"
    )
    parser.add_argument("--license", default=None, help="licence for the card (default: the teacher's)")
    parser.add_argument(
        "--push-to-hub", metavar="REPO", default=None, help="upload the export to this hub repo"
    )
    parser.add_argument("--private", action="store_true", help="with --push-to-hub: create a private repo")


def run(args: argparse.Namespace) -> int:
    out = export_run(
        args.run_dir,
        checkpoint=args.checkpoint,
        out=args.out,
        fmt=args.format,
        with_mlm_head=args.with_mlm_head,
        license=args.license,
        push_to_hub=args.push_to_hub,
        private=args.private,
    )
    print(out)
    return 0


def _check_out(out: Path, source: ExportSource) -> None:
    protected = {source.run_dir.resolve(), source.checkpoint.resolve(), *source.run_dir.resolve().parents}
    if out.resolve() in protected:
        raise ValueError(f"--out {out}: is the run directory, the checkpoint or above them; choose another")
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / _MARKER).is_file())):
        raise FileExistsError(f"--out {out}: exists and is not an earlier export; choose another directory")


def _teacher(config: dict) -> tuple[str, Path | None, str | None]:
    """(name for the card, local directory or None, hub id or None) of the run's teacher."""
    from pretrain_distill.assets import TEACHER_HUB_ID, AssetError, teacher_path

    path = config.get("teacher", {}).get("path", "")
    if path == "minilm":
        try:
            return TEACHER_HUB_ID, teacher_path(), TEACHER_HUB_ID
        except AssetError:
            return TEACHER_HUB_ID, None, TEACHER_HUB_ID
    local = Path(path)
    if local.is_dir():
        return str(local.resolve()), local.resolve(), None
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
) -> Path:
    """Export the student of ``checkpoint`` (default: newest complete) to ``out`` (default
    ``run_dir/export``) in format ``fmt``; ``with_mlm_head=None`` keeps the head when it was trained."""
    from pretrain_distill.export.card import model_card
    from pretrain_distill.export.encoder import mlm_head_trained, write_transformers
    from pretrain_distill.export.sentence_transformers import write_sentence_transformers

    if fmt not in FORMATS:
        raise ValueError(f"export format {fmt!r}: expected one of {', '.join(FORMATS)}")
    source = resolve_source(run_dir, checkpoint)
    out = Path(out) if out is not None else source.run_dir / "export"
    _check_out(out, source)
    head_trained = mlm_head_trained(source.config)
    if fmt == "sentence-transformers":  # embeddings: the base encoder, whatever the objective trained
        if with_mlm_head:
            raise ValueError("--with-mlm-head: the sentence-transformers format holds the base encoder only")
        with_mlm_head = False
    elif with_mlm_head is None:
        with_mlm_head = head_trained
    teacher_name, teacher_dir, hub_id = _teacher(source.config)
    command = _command(source, out, fmt, with_mlm_head, head_trained, license)
    if with_mlm_head and not head_trained:
        print(
            "export: warning: keeping an MLM head this run did not train (fill-mask output is not meaningful)",
            file=sys.stderr,
        )
    print(f"export: {source.describe()} -> {out} ({fmt})", file=sys.stderr)

    staging = out.with_name(f".tmp-{out.name}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        if fmt == "sentence-transformers":
            model = write_sentence_transformers(source, staging, teacher_dir)
        else:
            model = write_transformers(source, staging, with_mlm_head)
        shutil.copy2(source.checkpoint / "config.yaml", staging / _MARKER)
        from pretrain_distill.models.students import encoder_parameter_count

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
            command=command,
        )
        card.save(staging / "README.md")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out)
    os.replace(staging, out)
    if push_to_hub:
        from pretrain_distill.export.hub import push_to_hub as push

        print(f"export: pushed to {push(out, push_to_hub, private=private)}", file=sys.stderr)
    return out


def _command(
    source: ExportSource, out: Path, fmt: str, with_head: bool, head_trained: bool, license: str | None
) -> str:
    """The ``pretrain-distill export`` command that writes this export again."""
    argv = ["pretrain-distill", "export", str(source.run_dir), "--checkpoint", str(source.checkpoint)]
    argv += ["--out", str(out)] + (["--format", fmt] if fmt != "transformers" else [])
    if with_head != head_trained:
        argv.append("--with-mlm-head" if with_head else "--without-mlm-head")
    return shlex.join(argv + (["--license", license] if license else []))


def _stored_values(folder: Path) -> int:
    """Number of values in the directory's safetensors files (tied weights count once: stored once)."""
    from safetensors import safe_open

    total = 0
    for path in folder.glob("*.safetensors"):
        with safe_open(path, framework="pt") as f:
            total += sum(math.prod(f.get_slice(key).get_shape()) for key in f.keys())
    return total


def end_of_run(run_dir: Path) -> Path:
    """The engine's end-of-run hook: the default export of a finished run to ``<run_dir>/export``."""
    return export_run(run_dir)


__all__ = ["FORMATS", "end_of_run", "export_run"]
