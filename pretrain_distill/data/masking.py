"""Dynamic MLM masking (BERT): 15% of the real tokens, of which 80% [MASK], 10% random, 10% kept.

A fresh mask per batch, drawn on the batch's own device (GPU in training) from an optional seeded
``torch.Generator`` on that device. Special tokens and padding are never selected.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch


class DynamicMasker:
    """``masker(input_ids, attention_mask, generator) -> (masked_input_ids, labels)``.

    Build it from a Hugging Face tokenizer, or from explicit ids (e.g. a shard manifest's
    ``tokenizer`` entry: ``DynamicMasker(mask_id=..., vocab_size=..., special_ids=...)``).
    ``labels`` hold the original id where a token was selected and ``-100`` elsewhere. Random
    replacements are drawn uniformly from ``replacement_ids`` (a pruned student's kept tokens,
    :mod:`pretrain_distill.vocab`) less the special tokens; default: every non-special token.
    """

    def __init__(
        self,
        tokenizer: Any = None,
        *,
        mask_id: int | None = None,
        vocab_size: int | None = None,
        special_ids: Iterable[int] | None = None,
        probability: float = 0.15,
        mask_fraction: float = 0.8,
        random_fraction: float = 0.1,
        replacement_ids: Iterable[int] | None = None,
    ) -> None:
        if tokenizer is not None:
            mask_id, vocab_size = tokenizer.mask_token_id, len(tokenizer)
            special_ids = tokenizer.all_special_ids
        if mask_id is None or vocab_size is None or special_ids is None:
            raise ValueError("DynamicMasker needs a tokenizer, or mask_id, vocab_size and special_ids")
        if not 0.0 <= probability <= 1.0 or mask_fraction < 0 or random_fraction < 0:
            raise ValueError("probabilities must lie in [0, 1]")
        if mask_fraction + random_fraction > 1.0:
            raise ValueError(f"mask_fraction + random_fraction = {mask_fraction + random_fraction} > 1")
        self.mask_id, self.probability = int(mask_id), probability
        self.mask_fraction, self.random_fraction = mask_fraction, random_fraction
        self.special_ids = torch.tensor(sorted(set(special_ids)), dtype=torch.long)
        keep = torch.ones(int(vocab_size), dtype=torch.bool)
        if replacement_ids is not None:
            keep.zero_()
            keep[torch.tensor(sorted(set(replacement_ids)), dtype=torch.long)] = True
        keep[self.special_ids] = False
        self.replacement_ids = keep.nonzero().squeeze(1)  # random replacements are never special
        self._on_device: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def _tables(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if device not in self._on_device:
            self._on_device[device] = (self.special_ids.to(device), self.replacement_ids.to(device))
        return self._on_device[device]

    def __call__(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(masked_input_ids, labels)``; ``input_ids`` is left unchanged."""
        device = input_ids.device
        special, replacements = self._tables(device)
        maskable = ~torch.isin(input_ids, special)
        if attention_mask is not None:
            maskable &= attention_mask.bool()
        draw = torch.rand(input_ids.shape, generator=generator, device=device)
        selected = maskable & (draw < self.probability)
        # Reuse the draw: within the selected range it is uniform, so its rescaling splits 80/10/10.
        split = draw / self.probability
        to_mask = selected & (split < self.mask_fraction)
        to_random = (
            selected & (split >= self.mask_fraction) & (split < self.mask_fraction + self.random_fraction)
        )
        random_ids = replacements[
            torch.randint(len(replacements), input_ids.shape, generator=generator, device=device)
        ]
        masked = torch.where(to_mask, torch.full_like(input_ids, self.mask_id), input_ids)
        masked = torch.where(to_random, random_ids, masked)
        labels = torch.where(selected, input_ids, torch.full_like(input_ids, -100))
        return masked, labels
