"""Errors a user can fix. The CLI prints ``error: <message>`` on one line and exits 2."""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Callable, Iterator


class StuneError(Exception):
    """Bad input: the message names the field and the fix."""


class ConfigError(StuneError):
    pass


class DataError(StuneError):
    pass


class ModelError(StuneError):
    pass


class TrainingError(StuneError):
    """A fine-tune that cannot go on (NaN loss, out of memory); the message carries a hint."""


class Interrupted(KeyboardInterrupt):
    """Work stopped by Ctrl-C or SIGTERM (how SLURM and Kubernetes stop a job); ``exit_code`` is the
    shell's for that signal: 130 for Ctrl-C, 143 for SIGTERM."""

    def __init__(self, signum: int = signal.SIGINT):
        self.signal_name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        super().__init__(self.signal_name)
        self.exit_code = 128 + int(signum)


#: The signals that stop work gracefully: Ctrl-C, and what batch schedulers and Kubernetes send.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def on_stop_signals(handler: Callable) -> Iterator[None]:
    """``handler(signum, frame)`` for each of ``STOP_SIGNALS`` while the block runs, the previous
    handlers after it; nothing off the main thread, which is the only one Python gives signals to."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, handler) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)
