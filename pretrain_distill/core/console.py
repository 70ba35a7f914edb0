"""What libraries may print on a command's console. The policy, in one place:

- stdout carries only a command's result (paths, tables, JSON); progress bars and notes go to stderr.
- transformers' own bars ("Loading weights", "Writing model shards") take milliseconds and break the
  commands' progress bars at every checkpoint and export: silenced (:func:`quiet_libraries`, which every
  command that loads models calls first). The Trainer's bars and the hub's download bars stay.
- DeepSpeed, imported by transformers or the engine on a machine without a GPU, warns "Setting accelerator
  to CPU" on **stdout** (its logger writes there): the CPU is then the only choice, so it is named for it
  in advance (``DS_ACCELERATOR=cpu``) and the warning never comes.
- A load whose missing or unexpected weights are the point (a new classifier or MLM head to train, a
  teacher's pooler or MLM head not used) runs under :func:`loading_quietly`: transformers' LOAD REPORT
  table, its "This checkpoint seem corrupted" note on untied heads and its tensor-parallel plan check
  concern nobody there. The caller checks what does matter (weights of the encoder itself) and says it
  in its own words.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

import torch
from transformers.utils import logging as hf_logging

#: transformers' loggers of a model load: the load report and tied-weights notes, the tensor-parallel check.
_LOADING_LOGGERS = ("transformers.modeling_utils", "transformers.distributed.tensor_parallel")


def quiet_libraries() -> None:
    """Silence transformers' load / save bars and DeepSpeed's accelerator warning (module docstring)."""
    hf_logging.set_tqdm_hook(lambda factory, args, kwargs: hf_logging.EmptyTqdm(*args, **kwargs))
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")


@contextlib.contextmanager
def loading_quietly() -> Iterator[None]:
    """Load models whose missing / unexpected weights are expected, without transformers' load report
    (module docstring); the loggers' levels are restored after."""
    loggers = [logging.getLogger(name) for name in _LOADING_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
