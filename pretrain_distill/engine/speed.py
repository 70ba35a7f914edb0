"""Speed levers of the training loop that change how, not what, it computes (``train.compile``).

``torch.compile`` is applied per Transformer layer of the student and of the frozen teacher, in place
(``nn.Module.compile``): the layers are identical, so one compiled graph serves all of them, the
Distiller keeps calling the models the way it does (base encoder, MLM head on chosen rows), the
:class:`~pretrain_distill.models.Tap` hooks on the layers and their Q/K/V projections run inside the
compiled region, and state-dict keys stay unchanged (checkpoints and exports are unaffected).

Dynamo must guard on those hooks: by default (``skip_nnmodule_hook_guards``) it reuses the graph traced
for the first layer in every other layer, replaying the first layer's hooks, so a tap on a later layer
would silently capture nothing (the lever's test catches it). With the guards on, each layer whose hooks
differ gets its own graph, hence the recompile limit raised to cover every layer; a random HS mapping
redrawn every step would recompile every step (use ``remap_every: epoch`` with compile).
"""

from __future__ import annotations

import torch

from pretrain_distill.core.errors import ConfigError
from pretrain_distill.models.families import encoder_layers


def compile_layers(distiller: torch.nn.Module, backend: str) -> None:
    """Compile every Transformer layer of ``distiller.student`` and ``distiller.teacher`` with ``backend``
    (a ``torch.compile`` backend: ``inductor``, ``aot_eager``, ...); ``none`` leaves them eager."""
    if backend == "none":
        return
    if backend not in torch._dynamo.list_backends(exclude_tags=()):
        raise ConfigError(
            f"train.compile: unknown torch.compile backend {backend!r}; use none or one of "
            f"{', '.join(torch._dynamo.list_backends())}"
        )
    layers = [layer for model in (distiller.student, distiller.teacher) for layer in encoder_layers(model)]
    torch._dynamo.config.skip_nnmodule_hook_guards = False
    limit = torch._dynamo.config.recompile_limit
    torch._dynamo.config.recompile_limit = max(limit, 2 * len(layers))
    for layer in layers:
        layer.compile(backend=backend, dynamic=False)
