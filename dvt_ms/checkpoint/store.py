"""MindSpore checkpoint files: written atomically, read with errors that name the file.

MindSpore's saver deletes an existing file before writing its replacement, so checkpoints are
written to a temporary file in the same directory, fsync'ed, and moved over the old one with
``os.replace`` (``fileio.atomic_write``). A crash mid-save leaves the previous checkpoint intact.
"""
import contextlib
import os

import mindspore as ms
from mindspore import log as ms_log

from ..errors import CheckpointError
from ..fileio import atomic_write

__all__ = ["NOT_SAVED", "UnreadableCheckpointError", "atomic_save_checkpoint", "read_checkpoint", "check_shapes"]

# Recomputed from the config on every start (its length depends on steps per epoch).
NOT_SAVED = ("learning_rate",)


def atomic_save_checkpoint(cell, path, append_dict=None, skip=()):
    """Save ``cell``'s parameters (but those named in ``skip``) to ``path`` so that ``path`` is
    always either old or new, never partial. A full disk raises ``DiskFullError``."""
    left_out = set(NOT_SAVED) | set(skip)

    def write(temporary):
        ms.save_checkpoint(cell, temporary, append_dict=append_dict, crc_check=True,
                           choice_func=lambda name: name not in left_out)
        with open(temporary, "rb") as f:
            os.fsync(f.fileno())  # the data is on disk before the rename makes it visible

    atomic_write(path, write)
    directory_fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(directory_fd)  # and so is the rename
    finally:
        os.close(directory_fd)


class UnreadableCheckpointError(CheckpointError):
    """A checkpoint file that cannot be read at all (missing, no permission, truncated, corrupt)."""


@contextlib.contextmanager
def _mindspore_log_silenced():
    """MindSpore logs its own (misleading: "may not have permission") error line before raising; ours says it."""
    logger = ms_log._get_logger()   # MindSpore has no public handle on its logger
    disabled, logger.disabled = logger.disabled, True
    try:
        yield
    finally:
        logger.disabled = disabled


def read_checkpoint(path):
    """Every tensor of the checkpoint at ``path`` (CRC checked), or ``UnreadableCheckpointError`` saying why not."""
    if not os.path.isfile(path):
        raise UnreadableCheckpointError(f"checkpoint {path} does not exist")
    if not os.access(path, os.R_OK):
        raise UnreadableCheckpointError(f"cannot read checkpoint {path}: no permission to read it")
    try:
        with _mindspore_log_silenced():
            return ms.load_checkpoint(path, crc_check=True)
    except (ValueError, RuntimeError):
        # MindSpore says "may not have permission" for a failed CRC check too; the file is readable here.
        raise UnreadableCheckpointError(f"cannot read checkpoint {path}: the file is damaged (truncated, or its "
                                        "content fails the CRC check)") from None


def check_shapes(cell, params, path):
    for param in cell.get_parameters():
        value = params.get(param.name)
        if value is not None and tuple(value.shape) != tuple(param.shape):
            raise CheckpointError(f"{path}: parameter {param.name} has shape {tuple(value.shape)}, "
                                  f"the model expects {tuple(param.shape)}")
