"""What the host knows about a batch before its forward, read from the loader's CPU tensors: whether
it has padding, and which positions the MLM head must score. Deciding either on the device would make
the host wait for it (a ``.all()``, a boolean-mask index: shapes that depend on the data).

Inputs on the host cost nothing to read; inputs already on the device are fetched once (a
synchronisation, as such a read always is). The results are moved to ``device`` without blocking.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class HostBatch:
    """A batch's padding mask and logit rows, decided on the host, living on the model's device.

    ``attention_mask``: ``[B, T]``, or None when no token is padding. ``rows``: flat indices into
    ``B * T`` of the positions the logit terms score (the OD positions; the MLM term's masked ones are
    among them), None when no term reads logits. ``mlm_rows``: indices into ``rows`` of the positions
    the MLM term scores (None: all of them); ``mlm_labels``: their labels.
    """

    attention_mask: Tensor | None
    rows: Tensor | None = None
    mlm_rows: Tensor | None = None
    mlm_labels: Tensor | None = None


def _to(x: Tensor | None, device: torch.device) -> Tensor | None:
    return None if x is None else x.to(device, non_blocking=True)


def plan_batch(
    attention_mask: Tensor | None,
    labels: Tensor | None,
    device: torch.device,
    *,
    shape: torch.Size | tuple[int, int],
    od_positions: str | None = None,
    mlm: bool = False,
) -> HostBatch:
    """The :class:`HostBatch` of a ``[B, T]`` (``shape``) batch: its padding mask (None: no padding) and
    MLM ``labels`` (``-100`` where not masked). ``od_positions``: ``"masked"`` or ``"all"`` when the OD
    term is on, else None; ``mlm``: whether the MLM term is on. The OD positions (the masked tokens, or
    every valid one) hold the MLM term's, so the rows are the OD positions when OD is on, else the
    masked ones."""
    mask = None if attention_mask is None else attention_mask.cpu() != 0
    padded = mask is not None and not bool(mask.all())
    device_mask = _to(attention_mask, device) if padded else None
    if od_positions is None and not mlm:
        return HostBatch(device_mask)
    labels = None if labels is None else labels.cpu()
    if od_positions == "all":
        positions = mask if mask is not None else torch.ones(tuple(shape), dtype=torch.bool)
    else:
        positions = labels != -100
    rows = positions.flatten().nonzero().squeeze(1)
    if not mlm:
        return HostBatch(device_mask, _to(rows, device))
    mlm_labels = labels.flatten()[rows]
    labelled = mlm_labels != -100
    mlm_rows = None
    if not bool(labelled.all()):  # OD on every valid token: the MLM term scores the masked ones among them
        mlm_rows = labelled.nonzero().squeeze(1)
        mlm_labels = mlm_labels[mlm_rows]
    return HostBatch(device_mask, _to(rows, device), _to(mlm_rows, device), _to(mlm_labels, device))
