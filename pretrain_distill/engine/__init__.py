"""The DeepSpeed distillation engine: ``train(cfg) -> run_dir`` and its parts.

- :mod:`.distributed` -- rank / world / rendezvous from torchrun, deepspeed, SLURM or nothing.
- :mod:`.ds_config` -- DeepSpeed JSON merged with the run config (one source of truth).
- :mod:`.schedule` -- linear warmup + linear decay LR.
- :mod:`.checkpoint` -- atomic checkpoint directories, keep-last-K, RNG states.
- :mod:`.state` -- what a checkpoint holds; save / load of a whole run state.
- :mod:`.signals` -- SIGTERM / SIGUSR1 -> checkpoint and exit 75 (requeue).
- :mod:`.logging` -- JSON lines + TensorBoard.
- :mod:`.trainer` -- the loop; :mod:`.train` -- the ``pretrain-distill train`` command.
"""

# Import the CLI submodule first: importing a submodule binds it as an attribute of its package, so
# without this a later ``import pretrain_distill.engine.train`` would shadow the ``train`` function.
from pretrain_distill.engine import train as _cli  # noqa: F401
from pretrain_distill.engine.signals import EXIT_PREEMPTED
from pretrain_distill.engine.trainer import NonFiniteLossError, Preempted, train

__all__ = ["EXIT_PREEMPTED", "NonFiniteLossError", "Preempted", "train"]
