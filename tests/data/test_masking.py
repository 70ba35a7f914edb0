"""Dynamic masking: 15% of real tokens, 80/10/10, special tokens and padding never touched, seeded."""

from __future__ import annotations

import pytest
import torch

from pretrain_distill.data.masking import DynamicMasker

SPECIAL = [0, 100, 101, 102, 103]


def batch(rows: int = 256, length: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(1000, 30000, (rows, length), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    ids[:, 0], ids[:, 100] = 101, 102
    ids[::2, 200:], mask[::2, 200:] = 0, 0  # padded rows
    ids[:, 50] = 100  # [UNK] is special too
    return ids, mask


def masker(**kw) -> DynamicMasker:
    return DynamicMasker(mask_id=103, vocab_size=30522, special_ids=SPECIAL, **kw)


def test_rates_are_15_percent_and_80_10_10():
    ids, mask = batch()
    masked, labels = masker()(ids, mask, torch.Generator().manual_seed(0))
    real = mask.bool() & ~torch.isin(ids, torch.tensor(SPECIAL))
    selected = labels != -100
    rate = selected.sum() / real.sum()
    assert abs(rate - 0.15) < 0.01
    n = selected.sum()
    as_mask = (masked[selected] == 103).sum() / n
    kept = (masked[selected] == ids[selected]).sum() / n
    assert abs(as_mask - 0.8) < 0.02 and abs(kept - 0.1) < 0.015 and abs(1 - as_mask - kept - 0.1) < 0.015
    assert (labels[selected] == ids[selected]).all()
    assert torch.equal(masked[~selected], ids[~selected])  # untouched where not selected


def test_special_tokens_and_padding_are_never_selected_nor_used_as_replacements():
    ids, mask = batch()
    masked, labels = masker(probability=1.0)(ids, mask, torch.Generator().manual_seed(0))
    protected = ~mask.bool() | torch.isin(ids, torch.tensor(SPECIAL))
    assert (labels[protected] == -100).all() and torch.equal(masked[protected], ids[protected])
    assert (labels[~protected] != -100).all()
    randomised = (masked != ids) & (masked != 103)
    assert randomised.any() and not torch.isin(masked[randomised], torch.tensor(SPECIAL)).any()


def test_seeded_and_input_untouched():
    ids, mask = batch()
    before = ids.clone()
    a = masker()(ids, mask, torch.Generator().manual_seed(3))
    b = masker()(ids, mask, torch.Generator().manual_seed(3))
    c = masker()(ids, mask, torch.Generator().manual_seed(4))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and not torch.equal(a[1], c[1])
    assert torch.equal(ids, before)


def test_from_tokenizer(tokenizer):
    m = DynamicMasker(tokenizer)
    assert m.mask_id == tokenizer.mask_token_id == 103
    assert m.special_ids.tolist() == sorted(tokenizer.all_special_ids)


def test_bad_arguments():
    with pytest.raises(ValueError, match="needs a tokenizer"):
        DynamicMasker(mask_id=103)
    with pytest.raises(ValueError, match="> 1"):
        masker(mask_fraction=0.9, random_fraction=0.2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_runs_on_the_batch_device():
    ids, mask = (t.cuda() for t in batch())
    masked, labels = masker()(ids, mask, torch.Generator(device="cuda").manual_seed(0))
    assert masked.device == labels.device == ids.device
    assert abs((labels != -100).float().sum() / mask.sum() - 0.15) < 0.02
