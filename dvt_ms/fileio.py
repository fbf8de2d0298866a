"""Writing outputs so that a crash never leaves a half-written file or folder in their place."""
import os
import shutil
import tempfile
from contextlib import contextmanager

from .errors import OutputPathError

__all__ = ["atomic_write", "atomic_write_text", "staged_directory"]


def atomic_write(path, write):
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then rename it over ``path``."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    handle, tmp_path = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.splitext(path)[1], dir=directory)
    os.close(handle)
    try:
        write(tmp_path)
        os.replace(tmp_path, path)
    finally:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)


def atomic_write_text(path, text):
    def write(tmp_path):
        with open(tmp_path, "w", encoding="utf-8") as handle:
            handle.write(text)
    atomic_write(path, write)


@contextmanager
def staged_directory(out_dir, overwrite=False):
    """Yield a temporary sibling of ``out_dir`` to fill; on success it replaces ``out_dir``.

    An existing non-empty ``out_dir`` is an error unless ``overwrite``."""
    out_dir = os.path.abspath(out_dir)
    if os.path.exists(out_dir) and os.listdir(out_dir) and not overwrite:
        raise OutputPathError(f"{out_dir} exists and is not empty (pass --overwrite to replace it)")
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".staging-", dir=parent)
    try:
        yield staging
        if os.path.exists(out_dir):
            backup = staging + ".old"
            os.replace(out_dir, backup)
            os.replace(staging, out_dir)
            shutil.rmtree(backup)
        else:
            os.replace(staging, out_dir)
    finally:
        if os.path.isdir(staging):
            shutil.rmtree(staging)
