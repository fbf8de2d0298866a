"""The contract's documents as YAML: read with errors naming the file (and the line), written
without anchors."""
import yaml

from ..errors import ManifestError

__all__ = ["read_yaml", "dump_yaml"]


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
