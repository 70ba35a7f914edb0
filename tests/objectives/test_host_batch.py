"""What the host decides about a batch before its forward (padding, the positions the MLM head scores),
from the loader's CPU tensors, checked by hand."""

from __future__ import annotations

import torch

from pretrain_distill.objectives.host_batch import plan_batch

CPU = torch.device("cpu")


def test_padding_is_decided_on_the_host():
    full = torch.ones(2, 4, dtype=torch.long)
    assert plan_batch(full, None, CPU, shape=(2, 4)).attention_mask is None
    assert plan_batch(None, None, CPU, shape=(2, 4)).attention_mask is None
    padded = full.clone()
    padded[1, 3] = 0
    assert plan_batch(padded, None, CPU, shape=(2, 4)).attention_mask is padded
    assert plan_batch(padded, None, CPU, shape=(2, 4)).rows is None  # no logit term


def test_rows_are_the_od_positions_and_the_mlm_rows_the_labelled_among_them():
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    labels = torch.full((2, 4), -100)
    labels[0, 1], labels[1, 0], labels[1, 3] = 7, 8, 9
    masked = plan_batch(mask, labels, CPU, shape=(2, 4), od_positions="masked", mlm=True)
    assert masked.rows.tolist() == [1, 4, 7]  # flat positions of the labelled tokens
    assert masked.mlm_rows is None and masked.mlm_labels.tolist() == [7, 8, 9]
    every = plan_batch(mask, labels, CPU, shape=(2, 4), od_positions="all", mlm=True)
    assert every.rows.tolist() == [0, 1, 2, 4, 5, 6, 7]  # every valid token
    assert every.mlm_rows.tolist() == [1, 3, 6] and every.mlm_labels.tolist() == [7, 8, 9]
    od_only = plan_batch(None, None, CPU, shape=(2, 4), od_positions="all")
    assert od_only.rows.tolist() == list(range(8)) and od_only.mlm_labels is None
    mlm_only = plan_batch(mask, labels, CPU, shape=(2, 4), mlm=True)
    assert mlm_only.rows.tolist() == [1, 4, 7] and mlm_only.mlm_rows is None
    nothing = plan_batch(mask, torch.full((2, 4), -100), CPU, shape=(2, 4), od_positions="masked", mlm=True)
    assert nothing.rows.numel() == 0 and nothing.mlm_labels.numel() == 0
