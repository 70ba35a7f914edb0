"""What ONNX and int8 cost in accuracy: a distilled student fine-tuned on the demo task (the movie
sentences, the demo's cpu-profile settings), its classifier run by PyTorch, by ONNX Runtime on the
exported graph and on its dynamically quantized int8 copy (`pretrain_distill.export.onnx`, as
`export --format onnx --quantize int8` writes them), each scored on the same held-out sentences; plus
the base encoder's hidden-state cosine int8 vs fp32 on those sentences.

  .venv/bin/python benchmarks/onnx_int8_accuracy.py --model runs/demo/distill/export --seeds 1 2 3
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime
import torch
import transformers
from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

from finetune.finetune_config import load_finetune_config
from finetune.jobs import run as run_finetune
from finetune.tasks import load_task_data
from finetune.tokenization import limit
from pretrain_distill.export.onnx import (
    compare_on,
    export_onnx,
    graph_input_names,
    quantize_int8,
    run_session,
    session,
)


def finetuned_classifiers(model: str, out: Path, seeds: list[int]) -> tuple[list[Path], object]:
    """The demo's fine-tuning of ``model`` on the movie sentences (cpu profile), models saved."""
    cfg = load_finetune_config(
        [],
        [
            f"model={model}",
            "task=movies",
            "run_name=onnx-int8",
            f"output_dir={out}",
            f"seeds={seeds}",
            "epochs=2",
            "batch_size=32",
            "max_length=64",
            "lr=1e-4",
            "max_train_samples=4000",
            "max_eval_samples=1000",
            "device=cpu",
            "select=last",
            "save_model=true",
        ],
    )
    return [run_dir / "model" for run_dir in run_finetune(cfg)], cfg


def batches(tokenizer, texts: list[str], size: int = 64):
    names = graph_input_names(tokenizer)
    for start in range(0, len(texts), size):
        encoded = tokenizer(
            texts[start : start + size], padding=True, truncation=True, max_length=64, return_tensors="pt"
        )
        yield {n: encoded[n] for n in names}


def accuracies(model_dir: Path, texts: list[str], labels: np.ndarray, work: Path) -> dict[str, float]:
    """Held-out accuracy of the classifier under PyTorch, ONNX fp32 and ONNX int8."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    example = next(batches(tokenizer, texts[:4]))
    fp32 = export_onnx(model, example, work / "model.onnx")
    graphs = {
        "onnx fp32": session(fp32),
        "onnx int8": session(quantize_int8(fp32, work / "model_quantized.onnx")),
    }
    predictions: dict[str, list[np.ndarray]] = {"torch fp32": [], **{k: [] for k in graphs}}
    for batch in batches(tokenizer, texts):
        with torch.no_grad():
            predictions["torch fp32"].append(model(**batch).logits.argmax(-1).numpy())
        for name, graph in graphs.items():
            predictions[name].append(run_session(graph, batch).argmax(-1))
    return {k: float((np.concatenate(v) == labels).mean()) for k, v in predictions.items()}


def encoder_cosine(model: str, texts: list[str], work: Path) -> dict[str, float]:
    """The base encoder's int8 graph vs PyTorch: mean / min cosine of the hidden states at real tokens."""
    tokenizer = AutoTokenizer.from_pretrained(model)
    encoder = AutoModel.from_pretrained(model).eval()
    all_batches = list(batches(tokenizer, texts))
    int8 = session(
        quantize_int8(export_onnx(encoder, all_batches[0], work / "enc.onnx"), work / "enc_q.onnx")
    )
    results = [compare_on(encoder, int8, b) for b in all_batches]
    return {
        "mean": statistics.fmean(r.mean_cosine for r in results),
        "min": min(r.min_cosine for r in results),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", required=True, help="an exported student (pretrain-distill export)")
    parser.add_argument("--out", default=None, help="fine-tuning runs (default: a temporary directory)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[1])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="onnx-int8-") as tmp:
        out = Path(args.out or tmp)
        model_dirs, cfg = finetuned_classifiers(args.model, out / "finetune", args.seeds)
        dev = limit(load_task_data(cfg).evals["dev"], cfg.max_eval_samples)
        texts, labels = list(dev["text_a"]), np.asarray(dev["label"])
        rows = []
        for seed, model_dir in zip(args.seeds, model_dirs):
            work = out / f"onnx-{seed}"
            work.mkdir(parents=True, exist_ok=True)
            rows.append(accuracies(model_dir, texts, labels, work))
        cosine = encoder_cosine(args.model, texts, out)
    print(
        f"{args.model}: fine-tuned on the movie sentences, {len(texts)} held-out sentences, seeds {args.seeds}"
    )
    print()
    print("| runtime | " + " | ".join(f"seed {s}" for s in args.seeds) + " | mean | vs torch fp32 |")
    print("|---|" + "---|" * (len(args.seeds) + 2))
    base = statistics.fmean(r["torch fp32"] for r in rows)
    for name in rows[0]:
        values = [100 * r[name] for r in rows]
        mean = statistics.fmean(values)
        print(
            f"| {name} | "
            + " | ".join(f"{v:.2f}" for v in values)
            + f" | {mean:.2f} | {mean - 100 * base:+.2f} |"
        )
    print()
    print(
        f"base encoder, int8 vs fp32 hidden states at real tokens: mean cosine {cosine['mean']:.4f}, min {cosine['min']:.4f}"
    )
    print(
        f"torch {torch.__version__}, transformers {transformers.__version__}, onnxruntime {onnxruntime.__version__}, "
        f"{platform.machine()}"
    )


if __name__ == "__main__":
    main()
