"""Field-by-field checks of a YAML document, and YAML read and written the contract's way.

Every failure is a ``ManifestError`` naming the document and the field
(``manifest.yaml: preprocess.img_size: expected an integer >= 1, got 'banana'``).
"""
import math

import yaml

from ..errors import ManifestError

__all__ = ["Fields", "show", "read_yaml", "dump_yaml"]


class Fields:
    """Checks of one document's values; every failure names the document (``source``) and the field."""

    def __init__(self, source):
        self.source = source

    def fail(self, field, problem):
        raise ManifestError(f"{self.source}: {field}: {problem}")

    def mapping(self, value, field, keys=None, optional=()):
        if not isinstance(value, dict):
            self.fail(field, f"expected a mapping, got {show(value)}")
        if keys is not None:
            missing = [key for key in keys if key not in value and key not in optional]
            unknown = [key for key in value if key not in keys]
            if missing:
                self.fail(field, f"missing key(s) {', '.join(missing)}")
            if unknown:
                self.fail(field, f"unknown key(s) {', '.join(map(str, unknown))} (expected {', '.join(keys)})")
        return value

    def integer(self, value, field, minimum=1):
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            self.fail(field, f"expected an integer >= {minimum}, got {show(value)}")
        return value

    def number(self, value, field, low=-math.inf, high=math.inf, low_open=False):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
            self.fail(field, f"expected a number, got {show(value)}")
        if value > high or value < low or (low_open and value == low):
            self.fail(field, f"{value} is outside {'(' if low_open else '['}{low}, {high}]")
        return float(value)

    def numbers(self, value, field, length, **bounds):
        if not isinstance(value, list) or len(value) != length:
            self.fail(field, f"expected a list of {length} numbers, got {show(value)}")
        return [self.number(item, f"{field}[{index}]", **bounds) for index, item in enumerate(value)]

    def text(self, value, field):
        if not isinstance(value, str) or not value:
            self.fail(field, f"expected a non-empty string, got {show(value)}")
        return value

    def choice(self, value, field, choices):
        if value not in choices:
            self.fail(field, f"{show(value)} is not one of {', '.join(choices)}")
        return value


def show(value):
    """``value`` as an error message quotes it: its repr, cut at 60 characters."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _yaml_problem(err):
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    return f"{problem} (line {mark.line + 1}, column {mark.column + 1})" if mark else problem


def read_yaml(path, what):
    """The YAML document at ``path`` (``what`` it should be names it in errors), or a ManifestError."""
    try:
        with open(path, encoding="utf-8") as handle:
            return yaml.safe_load(handle)
    except OSError as err:
        raise ManifestError(f"cannot read {what} {path}: {err.strerror}") from None
    except UnicodeDecodeError:
        raise ManifestError(f"{path}: not a text file (expected {what} YAML)") from None
    except yaml.YAMLError as err:
        raise ManifestError(f"{path}: not valid YAML: {_yaml_problem(err)}") from None


class _NoAliasDumper(yaml.SafeDumper):
    """Every value written out in full: with anchors (``&id001`` / ``*id001``) a hand edit of one
    row (the default thresholds, say) would silently edit the rows sharing it."""

    def ignore_aliases(self, data):
        return True


def dump_yaml(document):
    """``document`` as YAML text, keys in their order, no anchors or aliases."""
    return yaml.dump(document, Dumper=_NoAliasDumper, sort_keys=False)
