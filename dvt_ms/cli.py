"""What every command line shares: ``key=value`` overrides, logging, and how errors end a command.

Conventions (train, convert, flops, calibrate, export, infer, demo): options use mindcv's
underscore spelling (``--calib_size``), config or architecture overrides are positional
``key=value`` pairs with YAML values, and a user error (``DVTError``) prints one line
``error: ...`` naming the file, key or value and exits with code 2, without a traceback.
"""
import logging
import signal
import sys
import threading

import yaml

from .errors import ConfigError, DVTError

__all__ = ["StopSignal", "interrupted_code", "raise_if_stop_requested", "parse_overrides", "setup_logging", "run"]

_logger = logging.getLogger("dvt_ms")


def _parse_value(text):
    """YAML value of ``text``; plain strings that are numbers in Python's eyes become floats.

    PyYAML follows YAML 1.1, where ``1e-6`` (no dot) is a string, not a float; we accept it as a
    float since that is what a user typing ``layernorm_eps=1e-6`` means.
    """
    value = yaml.safe_load(text)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def parse_overrides(items):
    """Parse ``key=value`` strings into a dict, values read as YAML.

    ``["num_classes=10", "feature_reuse=false", "patch_grids=[4,6,8]"]`` gives
    ``{"num_classes": 10, "feature_reuse": False, "patch_grids": [4, 6, 8]}``. ``items`` may be
    None or empty (an empty dict is returned). Raises ``ConfigError`` naming the offending item if
    an item has no ``=``, an empty key, a value that is not valid YAML, or repeats a key.
    Which keys are allowed is up to the caller.
    """
    overrides = {}
    for item in items or ():
        if not isinstance(item, str) or "=" not in item:
            raise ConfigError(f"malformed override {item!r}: expected key=value, e.g. num_classes=10")
        key, text = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"malformed override {item!r}: empty key before '='")
        if key in overrides:
            raise ConfigError(f"override {item!r} repeats key {key!r}")
        try:
            overrides[key] = _parse_value(text)
        except yaml.YAMLError as err:
            reason = str(err).splitlines()[0]
            raise ConfigError(f"malformed override {item!r}: value is not valid YAML ({reason})") from None
    return overrides


def setup_logging(level=logging.INFO, timestamps=True):
    """Log lines to stdout (progress) with an optional time stamp; warnings and errors included."""
    fmt = "%(asctime)s %(levelname)s %(message)s" if timestamps else "%(message)s"
    logging.basicConfig(level=level, format=fmt, datefmt="%Y-%m-%d %H:%M:%S", stream=sys.stdout)


class StopSignal(KeyboardInterrupt):
    """SIGTERM, raised where Python is as Ctrl-C raises ``KeyboardInterrupt``: a command stops the
    same way for both (outputs atomic, results so far kept), ending with 143 instead of 130."""

    exit_code = 128 + signal.SIGTERM


def interrupted_code(stop):
    """The exit code of a command stopped by ``stop`` (a ``KeyboardInterrupt``): 130 or 143."""
    return getattr(stop, "exit_code", 128 + signal.SIGINT)


def _stop(signum):
    return StopSignal() if signum == signal.SIGTERM else KeyboardInterrupt()


def _raise_stop_signal(signum, frame):
    raise _stop(signum)


_stop_requested = []   # signals received while a command defers them (``run(defer_interrupts=True)``)


def _defer_stop_signal(signum, frame):
    if _stop_requested:   # the second one stops at once
        raise _stop(signum)
    _stop_requested.append(signum)
    _logger.warning("stopping at the next safe point (send the signal again to stop at once)")


def raise_if_stop_requested():
    """At a point where the command can stop cleanly (e.g. between two exported exits): raise the
    Ctrl-C or SIGTERM that arrived while interrupts were deferred. A no-op otherwise.

    Deferring matters where MindSpore runs Python inside its own C++ (graph compilation during
    export): a ``KeyboardInterrupt`` raised there can be swallowed, and the command goes on."""
    if _stop_requested:
        raise _stop(_stop_requested.pop())


def run(command, defer_interrupts=False):
    """Call ``command()`` (returning None or an exit code) the way every CLI ends.

    A ``DVTError`` prints ``<label>: <message>`` on stderr (``error: ...`` for user errors) and
    returns its exit code (2 for user errors);
    Ctrl-C returns 130, SIGTERM 143, with a one-line note. Other exceptions are bugs and propagate.
    ``defer_interrupts``: Ctrl-C and SIGTERM only take effect where the command calls
    ``raise_if_stop_requested`` (a second signal stops at once).
    """
    handlers = {}
    if threading.current_thread() is threading.main_thread():
        wanted = {signal.SIGINT: _defer_stop_signal, signal.SIGTERM: _defer_stop_signal} if defer_interrupts \
            else ({signal.SIGTERM: _raise_stop_signal} if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL else {})
        for signum, handler in wanted.items():
            handlers[signum] = signal.signal(signum, handler)
    _stop_requested.clear()
    try:
        return command() or 0
    except DVTError as error:
        sys.stdout.flush()
        print(f"{error.label}: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt as stop:
        sys.stdout.flush()
        print("interrupted", file=sys.stderr)
        return interrupted_code(stop)
    finally:
        for signum, previous in handlers.items():
            signal.signal(signum, previous)
        _stop_requested.clear()
