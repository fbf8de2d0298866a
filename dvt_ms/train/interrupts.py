"""Ctrl-C and SIGTERM during training: stop gracefully once, abort on the second signal.

The first SIGINT or SIGTERM only records the request; the training loop finishes the step it is
in, saves a checkpoint and ends with ``TrainingInterrupted`` (exit code 128 + signal: 130 for
SIGINT, 143 for SIGTERM) saying how to continue. The signals' default actions come back at the
first one, so a second signal ends the process at once, even inside a long compiled call
(whatever it was writing is atomic: the previous checkpoint stays intact).
"""
import os
import signal
import threading

from ..errors import DVTError

__all__ = ["StopSignals", "TrainingInterrupted"]

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingInterrupted(DVTError):
    """Training stopped on request (SIGINT/SIGTERM) after saving; the message says how to continue."""

    label = "stopped"

    def __init__(self, message, signum):
        super().__init__(message)
        self.exit_code = 128 + signum


class StopSignals:
    """Context manager: while inside, ``requested`` becomes the first SIGINT/SIGTERM's number.

    Only the main thread can install signal handlers; elsewhere (e.g. training driven from a
    worker thread) the process keeps the default behaviour."""

    def __init__(self):
        self.requested = None
        self._previous = {}

    def _handle(self, signum, frame):
        self.requested = signum
        for other in _SIGNALS:
            signal.signal(other, signal.SIG_DFL)   # the next signal ends the process at once
        name = signal.Signals(signum).name
        os.write(2, f"\n{name}: stopping after the current step and saving a checkpoint "
                    f"(send it again to abort without saving)\n".encode())

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for signum in _SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
        return False

    @property
    def signal_name(self):
        return signal.Signals(self.requested).name if self.requested else None
