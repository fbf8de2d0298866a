"""Ctrl-C and SIGTERM during training: stop gracefully once, abort on the second signal.

While training runs, the first SIGINT or SIGTERM only records the request; the training loop
finishes the step it is in, saves a checkpoint and ends with ``TrainingInterrupted`` (exit code
128 + signal: 130 for SIGINT, 143 for SIGTERM; 0 under msrun, which would otherwise kill rank 0
while it saves) saying how to continue. A second signal, or one before training has started,
ends the process at once (whatever it was writing is atomic: the previous checkpoint is intact).

MindSpore installs a SIGINT handler of its own whenever it runs a graph, which turns Ctrl-C into
SIGTERM or loses it. So the command line (``watch_stop_signals``, before MindSpore starts any
thread) blocks both signals in every thread and takes them with ``sigwait`` in a thread of its
own, where no handler can intercept them; processes forked later get them unblocked. When the
trainer runs inside another program (tests, notebooks), Python signal handlers are used instead,
taken back from MindSpore after every step.
"""
import os
import signal
import threading

from ..errors import DVTError

__all__ = ["StopSignals", "TrainingInterrupted", "watch_stop_signals"]

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingInterrupted(DVTError):
    """Training stopped on request (SIGINT/SIGTERM) after saving; the message says how to continue."""

    label = "stopped"

    def __init__(self, message, exit_code):
        super().__init__(message)
        self.exit_code = exit_code


def _say(text):
    os.write(2, f"\n{text}\n".encode())


class _Request:
    """The first stop signal while training runs (``graceful``); anything else ends the process."""

    def __init__(self):
        self.signum = None
        self.graceful = False

    def on_signal(self, signum):
        name = signal.Signals(signum).name
        if self.signum is not None or not self.graceful:
            _say(f"{name}: aborting at once" + (" (nothing was saved since the last checkpoint)"
                                                 if self.signum is not None else ""))
            os._exit(128 + signum)
        self.signum = signum
        _say(f"{name}: stopping after the current step and saving a checkpoint (send it again to abort "
             "without saving)")


_watcher = None   # the _Request of the command line's signal thread, once started


def watch_stop_signals():
    """Route SIGINT/SIGTERM to a thread of their own for the rest of the process. Call it before
    importing MindSpore: threads started later inherit the blocked signals."""
    global _watcher
    if _watcher is not None or threading.current_thread() is not threading.main_thread():
        return
    request = _Request()
    signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
    os.register_at_fork(after_in_child=lambda: signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS))

    def wait_for_signals():
        while True:
            request.on_signal(signal.sigwait(_SIGNALS))

    threading.Thread(target=wait_for_signals, name="dvt-stop-signals", daemon=True).start()
    _watcher = request


class StopSignals:
    """Context manager around training: inside it, ``requested`` becomes the first stop signal."""

    def __init__(self):
        self._request = _watcher or _Request()
        self._previous = {}

    @property
    def requested(self):
        return self._request.signum

    @property
    def signal_name(self):
        return signal.Signals(self.requested).name if self.requested else None

    def _handle(self, signum, frame):
        self._request.on_signal(signum)
        if self._request.signum is not None:
            for other in _SIGNALS:
                signal.signal(other, signal.SIG_DFL)   # the next signal ends the process at once

    def __enter__(self):
        self._request.graceful = True
        if _watcher is None and threading.current_thread() is threading.main_thread():
            for signum in _SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def rearm(self):
        """Take the Python handlers back from MindSpore (none needed with the signal thread)."""
        if self._previous and self.requested is None:
            for signum in _SIGNALS:
                signal.signal(signum, self._handle)

    def __exit__(self, *exc_info):
        self._request.graceful = False
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
        return False
