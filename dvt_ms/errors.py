"""The errors a user can fix: a bad config, file, folder, checkpoint, manifest or argument.

Every command line catches ``DVTError`` and prints its message (which names the file, key or
value) without a traceback, exiting with ``exit_code`` (2 = a user error). Anything else that
escapes a command is a bug and keeps its traceback.
"""

__all__ = ["DVTError", "ConfigError", "DataError", "CheckpointError", "ConversionError",
           "CheckpointFormatError", "UnsafeCheckpointError", "ManifestError", "InferenceError",
           "OutputPathError", "DiskFullError"]


class DVTError(Exception):
    """Base of every error whose message tells the user what to change."""

    exit_code = 2
    label = "error"   # the command line prints "<label>: <message>"


class ConfigError(DVTError, ValueError):
    """A config (YAML file or key=value override) that cannot be used; names every key and value."""


class DataError(DVTError):
    """A dataset that cannot be used as configured; raised before any training or evaluation."""


class CheckpointError(DVTError):
    """A MindSpore checkpoint that cannot be used for this model or run."""


class ConversionError(DVTError, ValueError):
    """A published checkpoint that does not fit the requested model."""


class CheckpointFormatError(DVTError, ValueError):
    """A file that is not a PyTorch zip checkpoint we can read."""


class UnsafeCheckpointError(CheckpointFormatError):
    """A checkpoint whose pickle asks for something a tensor checkpoint never needs."""


class ManifestError(DVTError):
    """An exported model directory (manifest.yaml, MindIR files, thresholds) that cannot be used."""


class InferenceError(DVTError):
    """Bad inference inputs or options; raised before any output is written."""


class OutputPathError(DVTError):
    """An output path that cannot be written; checked before any work starts."""


class DiskFullError(OutputPathError):
    """No space left while writing an output; the temporary is removed and the previous file kept."""
