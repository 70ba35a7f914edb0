"""The DeepSpeed distillation engine: ``train(cfg) -> run_dir`` and its parts.

- :mod:`.deepspeed_config` -- DeepSpeed JSON merged with the run config (one source of truth).
- :mod:`.checkpoint` -- checkpoint directories (complete or absent), keep-last-K, RNG states.
- :mod:`.state` -- what a checkpoint holds; save / load of a whole run state.
- :mod:`.resume` -- which checkpoint a run continues, and that it is the same run.
- :mod:`.signals` -- SIGTERM / SIGUSR1 -> checkpoint and exit 75 (requeue).
- :mod:`.evaluate` -- the held-out validation pass; :mod:`.summary` -- the start-up summary.
- :mod:`.speed` -- ``torch.compile`` per layer; :mod:`.trainer` -- the loop.

Rank detection, the LR schedule and the metrics logger are shared with the fine-tuning stage
(:mod:`pretrain_distill.core`); the ``pretrain-distill train`` command is ``pretrain_distill.commands.train``.
"""

from pretrain_distill.engine.signals import EXIT_PREEMPTED
from pretrain_distill.engine.trainer import NonFiniteLossError, Preempted, train

__all__ = ["EXIT_PREEMPTED", "NonFiniteLossError", "Preempted", "train"]
