"""The training loop shared by fine-tuning and task distillation: AdamW, linear warmup + decay,
per-epoch evaluation, best-on-dev or last selection, optional DeepSpeed.

The trained module follows :mod:`finetune.kd`'s interface (``forward(batch)`` -> loss terms,
``logits(inputs)``, ``set_epoch(epoch)``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from finetune.config import FinetuneConfig


@dataclass
class FitResult:
    """What :func:`fit` did: per-epoch history, the epoch kept, the steps taken."""

    history: list[dict] = field(default_factory=list)
    selected_epoch: int = 0
    steps: int = 0


@torch.no_grad()
def predict(module: nn.Module, loader: DataLoader, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """Logits ``[N, C]`` and labels ``[N]`` of ``module`` over ``loader`` (eval mode)."""
    was_training = module.training
    module.eval()
    logits, labels = [], []
    for batch in loader:
        batch = {k: v.to(device) for k, v in batch.items()}
        logits.append(module.logits(batch).float().cpu())
        labels.append(batch["labels"].cpu())
    module.train(was_training)
    return torch.cat(logits).numpy(), torch.cat(labels).numpy()


def _optimizer(module: nn.Module, cfg: FinetuneConfig) -> torch.optim.Optimizer:
    """AdamW without weight decay on biases and LayerNorm weights."""
    params = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    no_decay = [p for n, p in params if p.ndim < 2]
    decay = [p for n, p in params if p.ndim >= 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr)


def _deepspeed_engine(module, optimizer, scheduler, cfg: FinetuneConfig, device: torch.device):
    """Wrap with ``deepspeed.initialize``; rank / world come from whichever launcher ran (or none:
    one process), as in the distillation engine."""
    import deepspeed

    from pretrain_distill.configuration import CONFIG_ROOT
    from pretrain_distill.engine.distributed import detect_env, init_distributed

    path = next((p for p in (Path(cfg.deepspeed), CONFIG_ROOT / cfg.deepspeed) if p.is_file()), None)
    if path is None:
        raise FileNotFoundError(f"DeepSpeed config not found: {cfg.deepspeed} (also looked in {CONFIG_ROOT})")
    ds_config = json.loads(path.read_text())
    if ds_config.get("zero_optimization", {}).get("stage", 0) >= 3:
        raise ValueError("fine-tuning supports ZeRO stages 0-2 (best-epoch selection reads full weights)")
    ds_config.update(
        train_micro_batch_size_per_gpu=cfg.batch_size,
        gradient_accumulation_steps=1,
        gradient_clipping=cfg.grad_clip,
    )
    ds_config.pop("train_batch_size", None)
    init_distributed(detect_env(), device)
    engine, _, _, _ = deepspeed.initialize(
        model=module, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config
    )
    return engine


def fit(
    module: nn.Module,
    train_loader: DataLoader,
    evaluate: Callable[[], dict[str, float]],
    cfg: FinetuneConfig,
    epochs: float,
    device: torch.device,
    selection_key: str,
) -> FitResult:
    """Train ``module`` for ``epochs`` (or ``cfg.max_steps``), evaluating after every epoch.

    ``evaluate()`` returns split -> score; ``selection_key`` names the split that picks the best epoch.
    With ``cfg.select == "best"`` the module ends with the best epoch's weights."""
    module.to(device).train()
    total = cfg.max_steps if cfg.max_steps > 0 else math.ceil(len(train_loader) * epochs)
    if total <= 0:
        raise ValueError("nothing to train: the training set is empty")
    optimizer = _optimizer(module, cfg)
    scheduler = get_linear_schedule_with_warmup(optimizer, round(cfg.warmup_ratio * total), total)
    engine = _deepspeed_engine(module, optimizer, scheduler, cfg, device) if cfg.deepspeed else None
    result, best_score, best_state = FitResult(), -math.inf, None
    bar = tqdm(total=total, desc="train", disable=not cfg.progress, dynamic_ncols=True)
    epoch = 0
    while result.steps < total:
        epoch += 1
        module.set_epoch(epoch - 1)
        sums: dict[str, float] = {}
        n_batches = 0
        for batch in train_loader:
            batch = {k: v.to(device) for k, v in batch.items()}
            terms = (engine or module)(batch)
            loss = terms["loss"]
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite loss at step {result.steps + 1}: {loss.item()}")
            if engine is not None:
                engine.backward(loss)
                engine.step()
            else:
                loss.backward()
                torch.nn.utils.clip_grad_norm_(module.parameters(), cfg.grad_clip)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            n_batches += 1
            result.steps += 1
            bar.update(1)
            bar.set_postfix(epoch=epoch, loss=f"{loss.item():.4f}")
            if result.steps >= total:
                break
        scores = evaluate()
        result.history.append(
            {"epoch": epoch, "step": result.steps, "train": {k: v / n_batches for k, v in sums.items()}}
            | {"scores": scores}
        )
        if cfg.select == "last" or scores[selection_key] > best_score:
            best_score, result.selected_epoch = scores[selection_key], epoch
            if cfg.select == "best":
                best_state = {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
    bar.close()
    if best_state is not None and result.selected_epoch != epoch:
        module.load_state_dict(best_state)
    return result
