"""Taps: capture hidden states and Q/K/V projections of chosen layers during a model's normal forward.

A :class:`Tap` puts forward hooks on the embeddings (hidden state 0), on the chosen Transformer layers
(hidden states ``1..L``) and on the chosen layers' query/key/value ``nn.Linear`` modules (Q/K/V of all
heads concatenated, ``[B, T, d]``). Nothing else changes: the model keeps its SDPA / flash attention
path (``output_attentions=True`` would force eager attention and materialise every layer's ``T x T``
matrix), and no tensor is copied; the tap only keeps references to tensors the forward creates anyway.

Layer numbering follows the papers: 0 = embedding output, ``1..L`` = Transformer layers.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from pretrain_distill.models.families import base_model, detect_family, encoder_layers, qkv_modules

QKV = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


@dataclass
class Captured:
    """What one forward captured: ``hidden[layer]`` = ``[B, T, d]``, ``qkv[layer]`` = ``(Q, K, V)``."""

    hidden: dict[int, torch.Tensor] = field(default_factory=dict)
    qkv: dict[int, QKV] = field(default_factory=dict)


def _first(output: torch.Tensor | tuple) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


class Tap:
    """Hooks on a Hugging Face encoder that capture chosen hidden states and Q/K/V during forward.

    Use: ``tap = Tap(model, hidden_layers=[0, 3], qkv_layers=[3])``; run ``model(...)`` (or its base
    model) as usual; ``tap.pop()`` returns the :class:`Captured` tensors and releases them. ``retarget``
    changes the layers (e.g. when a random mapping is redrawn); ``remove`` takes the hooks off.
    """

    def __init__(self, model: nn.Module, hidden_layers: Iterable[int] = (), qkv_layers: Iterable[int] = ()):
        self.model = model
        self.family = detect_family(model)
        self.num_layers = len(encoder_layers(model, self.family))
        self._handles: list[RemovableHandle] = []
        self._hidden: dict[int, torch.Tensor] = {}
        self._qkv: dict[int, list[torch.Tensor | None]] = {}
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
        layers = encoder_layers(self.model, self.family)
        for index in hidden_layers:
            module = base_model(self.model).embeddings if index == 0 else layers[index - 1]
            self._handles.append(module.register_forward_hook(self._hidden_hook(index)))
        for index in qkv_layers:
            for slot, linear in enumerate(qkv_modules(layers[index - 1], self.family)):
                self._handles.append(linear.register_forward_hook(self._qkv_hook(index, slot)))

    def _hidden_hook(self, index: int):
        def hook(_module: nn.Module, _inputs: tuple, output: torch.Tensor | tuple) -> None:
            self._hidden[index] = _first(output)

        return hook

    def _qkv_hook(self, index: int, slot: int):
        def hook(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
            self._qkv.setdefault(index, [None, None, None])[slot] = output

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

    def remove(self) -> None:
        """Take every hook off the model and drop captured tensors."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.clear()
