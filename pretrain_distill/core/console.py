"""What libraries may print on a command's console: the commands that load models call
:func:`quiet_libraries` first.

transformers' own bars ("Loading weights", "Writing model shards") take milliseconds and break the
commands' progress bars at every checkpoint and export: they are silenced. The Trainer's bars and the
hub's download bars are not these, and stay.
"""

from __future__ import annotations

from transformers.utils import logging as hf_logging


def quiet_libraries() -> None:
    """Silence transformers' load / save bars (see the module docstring)."""
    hf_logging.set_tqdm_hook(lambda factory, args, kwargs: hf_logging.EmptyTqdm(*args, **kwargs))
