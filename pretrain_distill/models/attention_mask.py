"""The attention mask an encoder's forward is given, chosen so that building it never reads the device.

Hugging Face's mask helper (``transformers.masking_utils.create_bidirectional_mask``, transformers 5)
asks ``padding_mask.all()`` in every forward that gets a 2D mask, to decide whether SDPA may run without
one: on a GPU, a host-device synchronisation per model per micro-batch. The caller knows the answer on
the host, from the loader's CPU mask, before the batch moves:

- no padding: no mask at all (``None`` is what the helper would have made of an all-ones mask);
- padding: the helper's own 4D mask, built by the helper itself with that question switched off
  (``allow_is_bidirectional_skip=False``) for the model's attention implementation; a 4D mask is handed
  on as it is. A family with sliding-window layers (ModernBERT) gets both of its masks, the full and the
  sliding-window one, by layer type. A family whose forward builds its masks its own way
  (``Family.prepared_mask`` false: DeBERTa's extended mask, which asks nothing) gets the 2D mask.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.masking_utils import create_bidirectional_mask, create_bidirectional_sliding_window_mask

from pretrain_distill.models.families import base_model, family_of


def encoder_attention_mask(
    model: nn.Module, attention_mask: torch.Tensor | None
) -> torch.Tensor | dict[str, torch.Tensor] | None:
    """What to pass as ``attention_mask`` to ``model``'s forward for a ``[B, T]`` padding mask on the
    model's device, ``None`` meaning "no padding" (see the module docstring)."""
    if attention_mask is None:
        return None
    config = base_model(model).config
    family = family_of(config)
    if not family.prepared_mask:
        return attention_mask
    # Only the shape, device and dtype of the embeddings matter to the helper (the eager mask's fill value).
    embeds = torch.empty((*attention_mask.shape, 0), dtype=model.dtype, device=attention_mask.device)
    kwargs = dict(config=config, inputs_embeds=embeds, attention_mask=attention_mask)
    full = create_bidirectional_mask(**kwargs, allow_is_bidirectional_skip=False)
    if family.sliding_window is None:
        return full
    sliding = create_bidirectional_sliding_window_mask(**kwargs, allow_is_bidirectional_skip=False)
    return {"full_attention": full, family.sliding_window[1]: sliding}
