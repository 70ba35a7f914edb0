"""Inference latency of students and teacher, as a Markdown table with each model's ratio to the teacher.

  pretrain-distill latency                                   # the paper's presets vs a BERT-base teacher
  pretrain-distill latency 3L 6L 2,4,128,512 runs/distill/export --teacher minilm --threads 2
  pretrain-distill latency 3,12,384,1024 modernbert:3,12,384,743       # another family, same parameters
  pretrain-distill latency --device cuda --batch 32 --seq 256 --out runs/latency.md
  pretrain-distill latency 3L runs/distill/export --runtime torch onnx onnx-int8   # where it will run

MODELS are preset names (6L-DistilBERT, 6L, 4L, 3L; default: all four), custom shapes `L,A,H,F`
(layers, heads, hidden, ffn), either after an encoder family (`modernbert:3L`, `deberta-v2:3,12,384,1024`;
see docs/models.md), and exported Hugging Face model directories. Presets and shapes are built from the
teacher's config (its vocabulary, positions and, without a prefix, its family) with random weights: latency depends on
the shape, not on the weights. Model directories are loaded as they are. `--teacher bert-base` (default)
is BERT-base's shape (12 x 768, 12 heads, FFN 3072, 30,522 tokens) built from its config with random
weights, so nothing is downloaded; a path or `minilm` loads a real teacher.

Each model runs the bare encoder (no MLM head) under torch.inference_mode on random token ids, all
positions valid: `--warmup` untimed rounds, then `--repeats` timed ones (CUDA: synchronised), where a
round runs every model once (interleaved, so a busy spell of a shared machine slows all models alike). The table
gives the median and the inter-quartile range (robust on a shared machine) and the mean (std), the
statistic of the paper's Table 1; with the BERT-base teacher a last column gives Table 1's CPU ratio
(monolingual) for comparison. Parameters count the encoder (embeddings + layers, no pooler, no head),
as in Table 1.

Runtimes (`--runtime`, one or more; default torch): `torch` is PyTorch eager (SDPA attention),
`onnx` ONNX Runtime (CPU) on the model exported by torch.onnx.export, `onnx-int8` ONNX Runtime on its
dynamically quantized copy (per-channel int8 weights), as `pretrain-distill export --format onnx
--quantize int8` writes them; each model is exported first, then every model under every runtime is
timed in the same interleaved rounds, and each row's ratio is to the teacher under the same runtime.
ONNX Runtime gets `--threads` intra-op threads. The ONNX runtimes need the onnx extra
(pip install 'distill-encoders[onnx]') and run on the CPU.

The paper's Table 1 states only "measured over 5 runs, with standard deviation"; its batch size,
sequence length and CPU threads are not given. Defaults here: batch 1, 128 tokens, 1 thread (the least
noisy on a shared machine), 5 warm-up and 30 timed forwards.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

from pretrain_distill.core.console import quiet_libraries
from pretrain_distill.latency import BERT_BASE, RUNTIMES, LatencySettings, latency_rows, markdown_table
from pretrain_distill.models import PRESETS


def add_settings_arguments(parser: argparse.ArgumentParser, prefix: str = "") -> None:
    """``--device --batch --seq --threads --warmup --repeats`` (``prefix`` e.g. ``latency-`` for search)."""
    d = LatencySettings()
    parser.add_argument(f"--{prefix}device", choices=["cpu", "cuda"], default=d.device, help="default: cpu")
    parser.add_argument(f"--{prefix}batch", type=int, default=d.batch, help=f"batch size (default {d.batch})")
    parser.add_argument(
        f"--{prefix}seq", type=int, default=d.seq, help=f"tokens per sequence (default {d.seq})"
    )
    parser.add_argument(
        f"--{prefix}threads", type=int, default=d.threads, help=f"CPU intra-op threads (default {d.threads})"
    )
    parser.add_argument(
        f"--{prefix}warmup", type=int, default=d.warmup, help=f"untimed forwards (default {d.warmup})"
    )
    parser.add_argument(
        f"--{prefix}repeats", type=int, default=d.repeats, help=f"timed forwards (default {d.repeats})"
    )


def settings_from_args(args: argparse.Namespace, prefix: str = "") -> LatencySettings:
    key = prefix.replace("-", "_")
    names = ("device", "batch", "seq", "threads", "warmup", "repeats")
    return LatencySettings(**{n: getattr(args, key + n) for n in names})


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "models",
        nargs="*",
        metavar="MODEL",
        help="presets, shapes L,A,H,F (either after a family: modernbert:3L) and model directories "
        "(default: the four presets)",
    )
    parser.add_argument(
        "--teacher",
        default=BERT_BASE,
        help=f"{BERT_BASE} (default: its shape, random weights), minilm, or a model directory",
    )
    add_settings_arguments(parser)
    parser.add_argument(
        "--runtime",
        nargs="+",
        choices=RUNTIMES,
        default=["torch"],
        help="torch (default), onnx, onnx-int8: one or more, timed together",
    )
    parser.add_argument("--out", help="also write the table to this Markdown file (+ .json beside it)")


def run(args: argparse.Namespace) -> int:
    quiet_libraries()
    settings = settings_from_args(args)
    runtimes = list(dict.fromkeys(args.runtime))
    rows = latency_rows(args.models or list(PRESETS), args.teacher, settings, runtimes)
    table = markdown_table(rows, settings, paper=args.teacher == BERT_BASE)
    print(table, end="")
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(table)
        record = {
            "settings": asdict(settings),
            "teacher": args.teacher,
            "runtimes": runtimes,
            "rows": [asdict(r) for r in rows],
        }
        out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    return 0
