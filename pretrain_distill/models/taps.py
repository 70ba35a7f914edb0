"""Taps: capture hidden states and Q/K/V projections of chosen layers during a model's normal forward.

A :class:`Tap` puts forward hooks on the modules whose outputs are the chosen hidden states (see
:mod:`pretrain_distill.models.families` for what "hidden state of layer L" means in every family: 0 = the
embedding output, the last one = the model's ``last_hidden_state``, final norm included) and on the chosen
layers' Q/K/V projections (all heads concatenated, ``[B, T, width]``; one fused projection is split into
Q, K, V). Nothing else changes: the model keeps its SDPA / flash attention path (``output_attentions=True``
would force eager attention and materialise every layer's ``T x T`` matrix), and no hidden state is
copied; the tap only keeps references to tensors the forward creates anyway.

A projection call counts only when its input is the token states entering the layer's attention module
(the holder's first argument): DeBERTa runs ``query_proj`` / ``key_proj`` a second time on its relative
position embeddings, and that call must never replace the token projections.

Rotary families (ModernBERT, EuroBERT) rotate Q and K after the projections. By default the tap keeps
them before the rotation (``rotary="before"``: content only, comparable with any other family); with
``rotary="after"`` it applies the layer's own (cos, sin) to them, giving the Q and K the attention scores
use. V is never rotated.

Layer numbering follows the papers: 0 = embedding output, ``1..L`` = Transformer layers.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from pretrain_distill.models.families import (
    detect_family,
    encoder_layers,
    head_dim,
    hidden_state_module,
    qkv_holder,
    qkv_projections,
    qkv_widths,
)

QKV = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
ROTARY_CHOICES = ("before", "after")


@dataclass
class Captured:
    """What one forward captured: ``hidden[layer]`` = ``[B, T, d]``, ``qkv[layer]`` = ``(Q, K, V)``."""

    hidden: dict[int, torch.Tensor] = field(default_factory=dict)
    qkv: dict[int, QKV] = field(default_factory=dict)


def _first(output: torch.Tensor | tuple) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, width: int) -> torch.Tensor:
    """Rotary position embedding (RoFormer, Su et al. 2021, eq. 34, in the "rotate half" layout of
    Hugging Face's ``apply_rotary_pos_emb``) of ``x [B, T, heads * width]``, per head of ``width``:
    ``x * cos + rotate_half(x) * sin`` with ``rotate_half([a, b]) = [-b, a]``; ``cos``, ``sin``:
    ``[B or 1, T, width]``. Computed in float32, returned in ``x``'s dtype."""
    heads = x.reshape(*x.shape[:-1], -1, width).float()
    half = width // 2
    rotated = torch.cat((-heads[..., half:], heads[..., :half]), dim=-1)
    out = heads * cos.unsqueeze(-2).float() + rotated * sin.unsqueeze(-2).float()
    return out.flatten(-2).to(x.dtype)


class Tap:
    """Hooks on a Hugging Face encoder that capture chosen hidden states and Q/K/V during forward.

    Use: ``tap = Tap(model, hidden_layers=[0, 3], qkv_layers=[3])``; run ``model(...)`` (or its base
    model) as usual; ``tap.pop()`` returns the :class:`Captured` tensors and releases them. ``retarget``
    changes the layers (e.g. when a random mapping is redrawn); ``remove`` takes the hooks off.
    ``rotary``: "before" (default) or "after" the rotary embedding, for Q and K of rotary families.
    """

    def __init__(
        self,
        model: nn.Module,
        hidden_layers: Iterable[int] = (),
        qkv_layers: Iterable[int] = (),
        rotary: str = "before",
    ):
        if rotary not in ROTARY_CHOICES:
            raise ValueError(f"rotary must be 'before' or 'after', got {rotary!r}")
        self.model = model
        self.family = detect_family(model)
        self.num_layers = len(encoder_layers(model, self.family))
        self.rotary = rotary
        self._widths = qkv_widths(model.config)
        self._head_dim = head_dim(model.config)
        self._handles: list[RemovableHandle] = []
        self._hidden: dict[int, torch.Tensor] = {}
        self._qkv: dict[int, list[torch.Tensor | None]] = {}
        self._inputs: dict[int, tuple[torch.Tensor, object]] = {}
        self.hidden_layers: tuple[int, ...] = ()
        self.qkv_layers: tuple[int, ...] = ()
        self.retarget(hidden_layers, qkv_layers)

    def _check(self, layers: Iterable[int], lowest: int, what: str) -> tuple[int, ...]:
        layers = tuple(sorted(set(layers)))
        bad = [i for i in layers if not lowest <= i <= self.num_layers]
        if bad:
            raise ValueError(
                f"cannot tap {what} of layer(s) {bad}: {type(self.model).__name__} has layers "
                f"{lowest}..{self.num_layers}"
            )
        return layers

    def retarget(self, hidden_layers: Iterable[int] = (), qkv_layers: Iterable[int] = ()) -> None:
        """Capture the hidden states of ``hidden_layers`` (0..L) and the Q/K/V of ``qkv_layers`` (1..L)."""
        hidden_layers = self._check(hidden_layers, 0, "hidden states")
        qkv_layers = self._check(qkv_layers, 1, "Q/K/V")
        self.remove()
        self.hidden_layers, self.qkv_layers = hidden_layers, qkv_layers
        for index in hidden_layers:
            module = hidden_state_module(self.model, index, self.family)
            self._handles.append(module.register_forward_hook(self._hidden_hook(index)))
        layers = encoder_layers(self.model, self.family)
        for index in qkv_layers:
            holder = qkv_holder(layers[index - 1], self.family)
            self._handles.append(
                holder.register_forward_pre_hook(self._holder_hook(index, holder), with_kwargs=True)
            )
            for slot, linear in enumerate(qkv_projections(layers[index - 1], self.family)):
                self._handles.append(linear.register_forward_hook(self._qkv_hook(index, slot)))

    def _hidden_hook(self, index: int):
        def hook(_module: nn.Module, _inputs: tuple, output: torch.Tensor | tuple) -> None:
            self._hidden[index] = _first(output)

        return hook

    def _holder_hook(self, index: int, holder: nn.Module):
        """Record the token states entering the attention module (and its rotary (cos, sin), if any)."""
        first = next(iter(inspect.signature(holder.forward).parameters))
        rotary_argument = self.family.qkv.rotary_argument

        def hook(_module: nn.Module, args: tuple, kwargs: dict) -> None:
            states = args[0] if args else kwargs[first]
            self._inputs[index] = (states, kwargs.get(rotary_argument) if rotary_argument else None)

        return hook

    def _qkv_hook(self, index: int, slot: int):
        def hook(_module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            states, rotary = self._inputs.get(index, (None, None))
            if inputs[0] is not states:  # not the token projection (e.g. DeBERTa's relative positions)
                return
            captured = self._qkv.setdefault(index, [None, None, None])
            fused = len(self.family.qkv.projections) == 1
            parts = torch.split(output, list(self._widths), dim=-1) if fused else (output,)
            for offset, part in enumerate(parts):
                alpha = slot + offset
                if self.rotary == "after" and rotary is not None and alpha < 2:  # Q and K, never V
                    part = apply_rotary(part, *rotary, self._head_dim)
                captured[alpha] = part

        return hook

    def pop(self) -> Captured:
        """The tensors captured since the last ``pop`` (all requested layers), released from the tap."""
        missing = [i for i in self.hidden_layers if i not in self._hidden] + [
            i for i in self.qkv_layers if i not in self._qkv or any(t is None for t in self._qkv[i])
        ]
        if missing:
            self.clear()
            raise RuntimeError(
                f"tap on {type(self.model).__name__} captured nothing for layer(s) {sorted(set(missing))}: "
                "was the model run (up to those layers) since the last pop()?"
            )
        captured = Captured(
            hidden=dict(self._hidden),
            qkv={i: tuple(v) for i, v in self._qkv.items()},  # type: ignore[misc]
        )
        self.clear()
        return captured

    def clear(self) -> None:
        """Drop whatever was captured (frees the references)."""
        self._hidden.clear()
        self._qkv.clear()
        self._inputs.clear()

    def remove(self) -> None:
        """Take every hook off the model and drop captured tensors."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.clear()
