"""MindSpore checkpoint files: written atomically, read with errors that name the file.

MindSpore's saver deletes an existing file before writing its replacement, so checkpoints are
written to a temporary file in the same directory, fsync'ed, and moved over the old one with
``os.replace`` (``fileio.atomic_write``). A crash mid-save leaves the previous checkpoint intact.
"""
import os

import mindspore as ms

from ..errors import CheckpointError
from ..fileio import atomic_write

__all__ = ["NOT_SAVED", "atomic_save_checkpoint", "read_checkpoint", "check_shapes"]

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


def read_checkpoint(path):
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        return ms.load_checkpoint(path, crc_check=True)
    except (ValueError, RuntimeError) as error:
        raise CheckpointError(f"cannot read checkpoint {path}: {error}") from None


def check_shapes(cell, params, path):
    for param in cell.get_parameters():
        value = params.get(param.name)
        if value is not None and tuple(value.shape) != tuple(param.shape):
            raise CheckpointError(f"{path}: parameter {param.name} has shape {tuple(value.shape)}, "
                                  f"the model expects {tuple(param.shape)}")
