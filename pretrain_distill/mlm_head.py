"""Fit an MLM head on a frozen teacher that has none (all-MiniLM-L6-v2), so that OD transfer can read
its output distribution:

  pretrain-distill fit-mlm-head --shards runs/shards/wiki --out runs/teacher_mlm --steps 1000
  pretrain-distill train students/3L objectives/od teacher.path=runs/teacher_mlm \\
      student.init_from=runs/hs/export                      # OD as the second stage after HS

The teacher's encoder stays frozen (eval mode, inference mode, its outputs unchanged). Only the head
trains: for BERT, RoBERTa and XLM-R the transform (dense + activation + LayerNorm) and the output bias,
with the decoder tied to the frozen input embeddings as in BERT. Data: the prepared shards with dynamic
MLM masking (15%, 80/10/10); loss: cross-entropy over the masked positions, the head run on those
positions only; AdamW with linear warmup (5%) and decay. The output is a ``*ForMaskedLM`` directory (the
teacher's encoder weights as they were, the fitted head, the tokenizer) plus ``mlm_head.json`` with the
settings and the masked-token loss, accuracy and perplexity over the first and the last 100 steps (on
the training stream: the corpus is small, and a held-out split would be smaller still).

This is a head fitted on a frozen sentence encoder's last layer, not the head MLM pretraining trains
together with the encoder: the teacher's token states were never shaped to predict masked words, which
bounds what any head can reach (``mlm_head.json`` says how far it got).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from pretrain_distill.models.families import base_model, mlm_head
from pretrain_distill.models.teacher import freeze


def mlm_head_module(model: nn.Module) -> nn.Module:
    """The one child of a ``*ForMaskedLM`` that maps final hidden states to logits (``cls``, ``lm_head``)."""
    head = mlm_head(model)
    if head is None:
        names = [n for n, m in model.named_children() if m is not base_model(model)]
        raise ValueError(
            f"{type(model).__name__}: expected one MLM head module next to the encoder, found {names}; "
            "fit-mlm-head supports BERT, RoBERTa and XLM-R style heads"
        )
    return head


def _masked_metrics(steps: list[tuple[float, int, int]], suffix: str) -> dict[str, float]:
    tokens = max(1, sum(s[2] for s in steps))
    return {
        f"masked_loss_{suffix}": sum(s[0] for s in steps) / tokens,
        f"masked_accuracy_{suffix}": sum(s[1] for s in steps) / tokens,
    }


def fit_mlm_head(
    teacher: str,
    shards: str,
    out: str | Path,
    steps: int = 1000,
    batch_size: int = 32,
    lr: float = 5e-3,
    device: str = "auto",
    seed: int = 0,
    report_last: int = 100,
) -> dict:
    """Train the MLM head of ``teacher`` (frozen encoder) on ``shards``; save to ``out``; return the record."""
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    from pretrain_distill.assets import resolve_model_path
    from pretrain_distill.config import DataConfig
    from pretrain_distill.data import DynamicMasker, build_dataloader
    from pretrain_distill.engine.distributed import resolve_device
    from pretrain_distill.engine.schedule import build_lr_scheduler
    from pretrain_distill.engine.trainer import check_tokenizer

    if steps < 1 or batch_size < 1 or lr <= 0:
        raise ValueError(f"steps, batch_size and lr must be positive, got {steps}, {batch_size}, {lr}")
    torch.manual_seed(seed)
    dev = resolve_device(device, 0)
    path = resolve_model_path(teacher)
    tokenizer = AutoTokenizer.from_pretrained(path)
    loader = build_dataloader(DataConfig(shards=shards, num_workers=1), batch_size, 0, 1, seed)
    check_tokenizer(loader.dataset.manifest, tokenizer)  # the inputs before the (slow) model
    model = AutoModelForMaskedLM.from_pretrained(path).to(dev)
    encoder, head = base_model(model), mlm_head_module(model)
    freeze(model)
    embeddings = model.get_input_embeddings().weight
    trainable = [p for p in head.parameters() if p is not embeddings]  # the decoder stays tied
    for p in trainable:
        p.requires_grad_(True)
    head.train()
    optimizer = torch.optim.AdamW(trainable, lr=lr, betas=(0.9, 0.98), weight_decay=0.01)
    scheduler = build_lr_scheduler(optimizer, steps, 0.05)
    masker = DynamicMasker(tokenizer)
    generator = torch.Generator(device=dev).manual_seed(seed)
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda")
    history: list[tuple[float, int, int]] = []  # (loss sum, correct, masked tokens) per step
    start, step = time.time(), 0
    bar = tqdm(total=steps, desc="fit-mlm-head", unit="step")
    while step < steps:
        for batch in loader:
            ids = batch["input_ids"].to(dev)
            attention = batch["attention_mask"].to(dev)
            masked, labels = masker(ids, attention, generator)
            selected = labels != -100
            n_masked = int(selected.sum())
            with torch.inference_mode(), autocast:
                hidden = encoder(input_ids=masked, attention_mask=attention).last_hidden_state[selected]
            with autocast:
                logits = head(hidden.clone()).float()  # clone: a normal tensor autograd may save
            loss = F.cross_entropy(logits, labels[selected], reduction="sum")
            (loss / max(1, n_masked)).backward()
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            correct = int((logits.argmax(-1) == labels[selected]).sum())
            history.append((loss.item(), correct, n_masked))
            step += 1
            bar.update()
            bar.set_postfix(loss=f"{history[-1][0] / max(1, history[-1][2]):.3f}")
            if step == steps:
                break
    bar.close()
    n = min(report_last, steps)
    record = {
        "teacher": str(path),
        "shards": str(shards),
        "steps": steps,
        "batch_size": batch_size,
        "lr": lr,
        "seed": seed,
        "trained": sorted(name for name, p in head.named_parameters() if p.requires_grad),
        **_masked_metrics(history[:n], f"first_{n}_steps"),
        **_masked_metrics(history[-n:], f"last_{n}_steps"),
        "seconds": round(time.time() - start, 1),
    }
    record["perplexity"] = math.exp(record[f"masked_loss_last_{n}_steps"])
    out = Path(out)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "mlm_head.json").write_text(json.dumps(record, indent=1))
    return record


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--teacher", default="minilm", help="teacher path or embedded name (default: minilm)")
    parser.add_argument("--shards", required=True, help="shards directory from `pretrain-distill prepare`")
    parser.add_argument("--out", required=True, help="output directory (a *ForMaskedLM model)")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=5e-3, help="peak learning rate (default: 5e-3)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    record = fit_mlm_head(
        args.teacher, args.shards, args.out, args.steps, args.batch_size, args.lr, args.device, args.seed
    )
    print(json.dumps(record, indent=1))
    return 0
