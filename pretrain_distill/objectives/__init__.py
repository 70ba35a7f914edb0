"""Distillation objectives: layer mappings, pure loss functions and the ``Distiller`` module.

Pure functions (tensors in, scalar float32 tensor out) so any training loop can call them:

- :func:`layer_mapping` / :func:`reachable_mapping` / :func:`mapping_pairs` -- the layer mapping ``phi``.
- :func:`hidden_state_loss` (eq. 6) with :class:`HiddenStateProjections` holding the ``W_i^j``.
- :func:`output_distribution_loss` (eq. 5).
- :func:`minilmv2_loss` (eqs. 7-9), chunked, memory independent of ``B * A_r``.
- :func:`direct_minilm_loss` (eq. 10) with :class:`DirectMiniLMMaps` (eq. 11 penalty as a method).
- :func:`cosine_hidden_loss`, :func:`mlm_loss` (DistilBERT baseline).

See ``docs/objectives.md`` for the equations and conventions.
"""

from pretrain_distill.objectives.distiller import Distiller
from pretrain_distill.objectives.losses import (
    DirectMiniLMMaps,
    HiddenStateProjections,
    cosine_hidden_loss,
    direct_minilm_loss,
    hidden_state_loss,
    mlm_loss,
    output_distribution_loss,
    projection_key,
)
from pretrain_distill.objectives.mappings import (
    STRATEGIES,
    layer_mapping,
    mapping_pairs,
    reachable_mapping,
    validate_mapping,
)
from pretrain_distill.objectives.relations import minilmv2_loss

__all__ = [
    "STRATEGIES",
    "DirectMiniLMMaps",
    "Distiller",
    "HiddenStateProjections",
    "cosine_hidden_loss",
    "direct_minilm_loss",
    "hidden_state_loss",
    "layer_mapping",
    "mapping_pairs",
    "minilmv2_loss",
    "mlm_loss",
    "output_distribution_loss",
    "projection_key",
    "reachable_mapping",
    "validate_mapping",
]
