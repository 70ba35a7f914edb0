"""Write a run's student as a model directory for fine-tuning or sentence embeddings:

  pretrain-distill export runs/distill                 # newest complete checkpoint -> runs/distill/export
  pretrain-distill export runs/distill --checkpoint runs/distill/checkpoints/step_00001000 --out my_model
  pretrain-distill export runs/distill --format sentence-transformers --out my_embedder
  pretrain-distill export runs/distill --format onnx --quantize int8 --out my_onnx
  pretrain-distill export runs/distill --push-to-hub me/my-student

Formats:
  transformers            the base encoder (BertModel, RobertaModel, ...; fp32 safetensors) that
                          AutoModel / AutoModelForSequenceClassification load with only the new
                          classifier to initialise; the MLM head too when the objective trained it
                          (od, mlm) or with --with-mlm-head
  sentence-transformers   the base encoder + modules.json and the teacher's pooling (mean for
                          all-MiniLM-L6-v2), for sentence_transformers.SentenceTransformer(dir)
  onnx                    the base encoder as model.onnx (torch.onnx.export; inputs input_ids,
                          attention_mask [, token_type_ids], output last_hidden_state, dynamic batch
                          and length) for ONNX Runtime, checked against PyTorch on a padded batch
                          (max |difference| <= 1e-4, else nothing is written); --quantize int8 adds
                          model_quantized.onnx (ONNX Runtime dynamic quantization, per-channel int8
                          weights); onnx_report.json records both graphs' agreement with PyTorch.
                          Needs the onnx extra: pip install 'distill-encoders[onnx]'

Every format holds the tokenizer, the resolved run config (distill_config.yaml) and a model card
(README.md: teacher, student and parameter count, objective, data, tokens, steps, licence, commands);
every format names local paths by their last component (the teacher's folder, the data file, the
checkpoint within the run), not by this machine's absolute paths, unless --card-paths full. A pruned
student (student.vocab=corpus) comes with the teacher's tokenizer rewritten to give the student's ids,
and its student_vocab.json. The export says which checkpoint (step, time) it holds. The inputs are
checked before anything is written; an
existing output directory is replaced only when it is an earlier export.
"""

from __future__ import annotations

import argparse

from pretrain_distill.core.console import quiet_libraries
from pretrain_distill.core.public_paths import PATH_STYLES
from pretrain_distill.export import FORMATS, QUANTIZE, export_run


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
    parser.add_argument(
        "--quantize",
        choices=QUANTIZE,
        default=None,
        help="with --format onnx: also an int8 copy of the graph",
    )
    parser.add_argument("--license", default=None, help="licence for the card (default: the teacher's)")
    parser.add_argument(
        "--push-to-hub", metavar="REPO", default=None, help="upload the export to this hub repo"
    )
    parser.add_argument("--private", action="store_true", help="with --push-to-hub: create a private repo")
    parser.add_argument(
        "--card-paths",
        choices=PATH_STYLES,
        default="names",
        help="how the model card and the copied config name local paths: names (the teacher's folder, "
        "the data file, the checkpoint within the run; default) or full (this machine's absolute paths)",
    )


def run(args: argparse.Namespace) -> int:
    quiet_libraries()
    out = export_run(
        args.run_dir,
        checkpoint=args.checkpoint,
        out=args.out,
        fmt=args.format,
        with_mlm_head=args.with_mlm_head,
        license=args.license,
        push_to_hub=args.push_to_hub,
        private=args.private,
        quantize=args.quantize,
        card_paths=args.card_paths,
    )
    print(out)
    return 0
