"""The attention mask an encoder's forward is given, chosen so that building it never reads the device.

Hugging Face's mask helper (``transformers.masking_utils.create_bidirectional_mask``, transformers 5)
asks ``padding_mask.all()`` in every forward that gets a 2D mask, to decide whether SDPA may run without
one: on a GPU, a host-device synchronisation per model per micro-batch. The caller knows the answer on
the host, from the loader's CPU mask, before the batch moves:

- no padding: no mask at all (``None`` is what the helper would have made of an all-ones mask);
- padding: the helper's own 4D mask, built by the helper itself with that question switched off
  (``allow_is_bidirectional_skip=False``) for the model's attention implementation; a 4D mask is handed
  on as it is. Families whose forward builds its masks otherwise (``Family.prepared_mask`` false:
  ModernBERT's full and sliding-window masks, DeBERTa's own extended mask) get the 2D mask unchanged.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.masking_utils import create_bidirectional_mask

from pretrain_distill.models.families import base_model, family_of


def encoder_attention_mask(model: nn.Module, attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """What to pass as ``attention_mask`` to ``model``'s forward for a ``[B, T]`` padding mask on the
    model's device, ``None`` meaning "no padding" (see the module docstring)."""
    if attention_mask is None:
        return None
    config = base_model(model).config
    if not family_of(config).prepared_mask:
        return attention_mask
    # Only the shape, device and dtype of the embeddings matter to the helper (the eager mask's fill value).
    embeds = torch.empty((*attention_mask.shape, 0), dtype=model.dtype, device=attention_mask.device)
    return create_bidirectional_mask(
        config=config, inputs_embeds=embeds, attention_mask=attention_mask, allow_is_bidirectional_skip=False
    )
