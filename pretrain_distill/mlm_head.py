"""An MLM head fitted on a frozen teacher that has none (all-MiniLM-L6-v2), so that OD transfer can read
its output distribution (``pretrain-distill fit-mlm-head``, whose ``--help`` says what is trained and how).

Only the head trains: the family's MLM head chain (BERT's ``cls``, RoBERTa's ``lm_head``, ModernBERT's
``head -> decoder``, ELECTRA's ``generator_predictions -> generator_lm_head``, DeBERTa's ``cls``, ...;
see :mod:`pretrain_distill.models.families`) except a decoder tied to the frozen input embeddings, with
dynamic masking on the prepared shards and the LR schedule of both stages. This gives OD a teacher head
where the checkpoint has none (all-MiniLM-L6-v2, ELECTRA discriminators, DeBERTa-v3); the result is a
``*ForMaskedLM`` directory plus ``mlm_head.json``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm
from transformers import AutoModelForMaskedLM

from pretrain_distill.core.console import loading_quietly
from pretrain_distill.core.distributed import resolve_device
from pretrain_distill.core.files import check_replaceable, staged_dir
from pretrain_distill.core.lr_schedule import build_lr_scheduler
from pretrain_distill.core.model_names import find_model
from pretrain_distill.core.tokenizer_loading import load_tokenizer
from pretrain_distill.data import DynamicMasker, build_dataloader
from pretrain_distill.data.manifest import check_tokenizer
from pretrain_distill.models.families import base_model, detect_family, mlm_head
from pretrain_distill.models.teacher import freeze
from pretrain_distill.run_config import DataConfig

RECORD = "mlm_head.json"  # the settings and the masked-token metrics, beside the model


def mlm_head_module(model: nn.Module) -> nn.Module:
    """The family's MLM head chain of a ``*ForMaskedLM`` (final hidden states -> logits) as one module."""
    head = mlm_head(model)
    if head is None:
        names = [n for n, m in model.named_children() if m is not base_model(model)]
        raise ValueError(
            f"{type(model).__name__}: expected its family's MLM head modules "
            f"{', '.join(detect_family(model).mlm_head)} next to the encoder, found {names}"
        )
    return head


def _masked_metrics(steps: list[tuple[float, int, int]], suffix: str) -> dict[str, float]:
    tokens = max(1, sum(s[2] for s in steps))
    return {
        f"masked_loss_{suffix}": sum(s[0] for s in steps) / tokens,
        f"masked_accuracy_{suffix}": sum(s[1] for s in steps) / tokens,
    }


def trainable_head(model: nn.Module) -> list[nn.Parameter]:
    """Freeze ``model`` except its MLM head; the decoder stays tied to the frozen input embeddings.
    Returns the head's trainable parameters (the head is put in training mode)."""
    head = mlm_head_module(model)
    freeze(model)
    embeddings = model.get_input_embeddings().weight
    trainable = [p for p in head.parameters() if p is not embeddings]
    for p in trainable:
        p.requires_grad_(True)
    head.train()
    return trainable


def _train_head(
    model: nn.Module, loader: Iterable[dict], masker: DynamicMasker, steps: int, lr: float, dev, seed: int
) -> list[tuple[float, int, int]]:
    """``steps`` AdamW steps of the head on masked batches (encoder under inference mode, the head on the
    masked rows only); returns ``(loss sum, correct, masked tokens)`` per step."""
    encoder, head = base_model(model), mlm_head_module(model)
    optimizer = torch.optim.AdamW(trainable_head(model), lr=lr, betas=(0.9, 0.98), weight_decay=0.01)
    scheduler = build_lr_scheduler(optimizer, steps, 0.05)
    generator = torch.Generator(device=dev).manual_seed(seed)
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda")
    history: list[tuple[float, int, int]] = []
    bar = tqdm(total=steps, desc="fit-mlm-head", unit="step")
    while len(history) < steps:
        for batch in loader:
            attention = batch["attention_mask"].to(dev)
            masked, labels = masker(batch["input_ids"].to(dev), attention, generator)
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
            bar.update()
            bar.set_postfix(loss=f"{history[-1][0] / max(1, history[-1][2]):.3f}")
            if len(history) == steps:
                break
    bar.close()
    return history


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
    if steps < 1 or batch_size < 1 or lr <= 0:
        raise ValueError(f"steps, batch_size and lr must be positive, got {steps}, {batch_size}, {lr}")
    out = Path(out)
    check_replaceable(out, RECORD, "fit-mlm-head output")
    torch.manual_seed(seed)
    dev = resolve_device(device, 0)
    path = find_model(teacher, "teacher")
    tokenizer = load_tokenizer(path)
    loader = build_dataloader(DataConfig(shards=shards, num_workers=1), batch_size, 0, 1, seed)
    check_tokenizer(loader.dataset.manifest, tokenizer)  # the inputs before the (slow) model
    with loading_quietly():  # the head this command fits is missing: that is the point
        model = AutoModelForMaskedLM.from_pretrained(path).to(dev)
    mlm_head_module(model)  # a clear error before any training for a head this cannot fit
    start = time.time()
    history = _train_head(model, loader, DynamicMasker(tokenizer), steps, lr, dev, seed)
    n = min(report_last, steps)
    record = {
        "teacher": str(path),
        "shards": str(shards),
        "steps": steps,
        "batch_size": batch_size,
        "lr": lr,
        "seed": seed,
        "trained": sorted(name for name, p in model.named_parameters() if p.requires_grad),
        **_masked_metrics(history[:n], f"first_{n}_steps"),
        **_masked_metrics(history[-n:], f"last_{n}_steps"),
        "seconds": round(time.time() - start, 1),
    }
    record["perplexity"] = math.exp(record[f"masked_loss_last_{n}_steps"])
    with staged_dir(out) as staging:  # `out` is replaced whole: never half written, nor mixed with a rival's
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / RECORD).write_text(json.dumps(record, indent=1))
    return record
