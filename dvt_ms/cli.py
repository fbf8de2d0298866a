"""What every command line shares: its parser, ``key=value`` overrides, logging, and how errors
end a command.

Conventions (train, convert, flops, calibrate, export, infer, demo, benchmarks): the parser comes
from ``argument_parser``: the usage line names the command as the user typed it (the shell
script, the ``dvt-*`` console script or ``python -m ...``), the help is plain text shown once with
each option's default, and ``--version`` prints the package version. Options use mindcv's
underscore spelling (``--calib_size``), config or architecture overrides are positional
``key=value`` pairs with YAML values, and a user error (``DVTError``) prints one line
``error: ...`` naming the file, key or value and exits with code 2, without a traceback.
"""
import argparse
import logging
import os
import re
import signal
import sys
import threading

import yaml

from . import __version__
from .errors import ConfigError, DVTError

__all__ = ["PROG_VARIABLE", "argument_parser", "command_name", "plain_text", "StopSignal", "interrupted_code",
           "raise_if_stop_requested", "parse_overrides", "setup_logging", "run"]

# Set by scripts/run_*.sh for the one process they exec: the script's path, for the usage line.
PROG_VARIABLE = "DVT_PROG"


def command_name(module):
    """How the user ran the command in ``module`` (a module name, or a script's path such as
    ``benchmarks/train_step.py``): the shell script that started it (it sets ``DVT_PROG``), the
    ``dvt-*`` console script, else ``python -m module`` (``python PATH`` for a script). The
    variable is consumed here so that commands this one starts name themselves."""
    script = os.environ.pop(PROG_VARIABLE, None)
    if script:
        return script
    program = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    if program.startswith("dvt-"):
        return program
    return f"python {module}" if module.endswith(".py") else f"python -m {module}"


def plain_text(doc, paragraphs=None):
    """A command's docstring as help text: without its "Command line:" heading and the example
    command lines (the usage line shows how to run it, under the name the user typed), without
    reStructuredText's ``literal`` quotes; only the first ``paragraphs`` when given."""
    kept = []
    for paragraph in re.split(r"\n\s*\n", doc.strip()):
        lines = [line.strip() for line in paragraph.splitlines() if line.strip()]
        if lines[0].startswith(("python ", "bash ", "dvt-")):
            continue   # example command lines
        if not kept and paragraph.startswith("Command line:"):
            paragraph = paragraph[len("Command line:"):].strip()
            if paragraph.startswith("``"):
                continue   # only the command line itself
            paragraph = paragraph[:1].upper() + paragraph[1:]
        kept.append(re.sub(r"``([^`]+)``", r"\1", paragraph))
    return "\n\n".join(kept[:paragraphs])


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions as written (examples keep their layout); every option's default appended,
    unless it has none or its help already says it."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if (default is None or default is False or default is argparse.SUPPRESS or "default" in text
                or action.option_strings == []
                or isinstance(action, (argparse._VersionAction, argparse._HelpAction))):
            return text
        return f"{text} (default: %(default)s)"


def argument_parser(module, doc, paragraphs=None, **kwargs):
    """The ``ArgumentParser`` of the command in ``module`` (e.g. ``"dvt_ms.export"``), described
    by its docstring ``doc`` (shown once, as plain text; its first ``paragraphs`` when given),
    with ``--version``."""
    parser = argparse.ArgumentParser(prog=command_name(module), description=plain_text(doc, paragraphs),
                                     formatter_class=_HelpFormatter, **kwargs)
    parser.add_argument("--version", action="version", version=f"%(prog)s (dvt-ms {__version__})")
    return parser

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
