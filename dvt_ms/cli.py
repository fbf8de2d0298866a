"""What every command line shares: ``key=value`` overrides, logging, and how errors end a command.

Conventions (train, convert, flops, calibrate, export, infer, demo): options use mindcv's
underscore spelling (``--calib_size``), config or architecture overrides are positional
``key=value`` pairs with YAML values, and a user error (``DVTError``) prints one line
``error: ...`` naming the file, key or value and exits with code 2, without a traceback.
"""
import logging
import sys

import yaml

from .errors import ConfigError, DVTError

__all__ = ["parse_overrides", "setup_logging", "run"]

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


def run(command):
    """Call ``command()`` (returning None or an exit code) the way every CLI ends.

    A ``DVTError`` prints ``<label>: <message>`` on stderr (``error: ...`` for user errors) and
    returns its exit code (2 for user errors);
    Ctrl-C returns 130 with a one-line note. Other exceptions are bugs and propagate.
    """
    try:
        return command() or 0
    except DVTError as error:
        sys.stdout.flush()
        print(f"{error.label}: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        sys.stdout.flush()
        print("interrupted", file=sys.stderr)
        return 130
