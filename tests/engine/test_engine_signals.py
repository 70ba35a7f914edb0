"""Preemption signals set a flag (the loop checkpoints and exits); handlers are restored afterwards."""

from __future__ import annotations

import os
import signal

import pytest

from pretrain_distill.engine.signals import PreemptionFlag


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1])
def test_signal_sets_flag_and_handlers_restore(sig):
    before = signal.getsignal(sig)
    with PreemptionFlag() as flag:
        assert not flag.requested
        os.kill(os.getpid(), sig)
        assert flag.requested and flag.received == sig
    assert signal.getsignal(sig) == before
