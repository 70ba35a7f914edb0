"""Preemption: SIGTERM / SIGUSR1 (SLURM's ``--signal=USR1@<s>`` warning, or its SIGTERM) ask the run to
save a checkpoint at the next step boundary and exit with :data:`EXIT_PREEMPTED` so it can be requeued.

The handler only sets a flag; the training loop polls it (agreeing over ranks) between steps.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

from pretrain_distill.core.errors import RunStopped

# EX_TEMPFAIL (sysexits.h): "try again later". The run saved a checkpoint on a preemption signal;
# restarting it with `resume: auto` continues where it stopped. slurm/distill.sbatch requeues on it.
EXIT_PREEMPTED = RunStopped.exit_code

PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class PreemptionFlag:
    """Context manager installing handlers that record the first preemption signal received."""

    def __init__(self, signals: tuple[signal.Signals, ...] = PREEMPTION_SIGNALS) -> None:
        self.signals = signals
        self.received: signal.Signals | None = None
        self._previous: dict[signal.Signals, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is None:
            self.received = signal.Signals(signum)

    @property
    def requested(self) -> bool:
        return self.received is not None

    def __enter__(self) -> PreemptionFlag:
        if threading.current_thread() is not threading.main_thread():
            return self  # handlers can only be installed from the main thread: the flag stays unset
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
