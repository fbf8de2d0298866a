"""The YAML configs shipped with the package, named as the README names them.

The repository's ``configs/`` folder is installed as the package data ``dvt_ms/configs`` (setup.py
maps it), so ``configs/tiny_cpu.yaml`` works from any folder with an installed package too: a
config path that does not exist on disk and names a shipped config (``configs/<name>.yaml`` or
``<name>.yaml``) is read from the package. A file on disk always wins.
"""
import os
import pathlib

__all__ = ["config_path"]

_PACKAGE = pathlib.Path(__file__).resolve().parent


def _shipped_folder():
    """The installed package's ``dvt_ms/configs``, else (a checkout) the repository's ``configs/``."""
    installed = _PACKAGE / "configs"
    return installed if installed.is_dir() else _PACKAGE.parent / "configs"


def config_path(path):
    """``path`` itself when it exists (or is None); else the shipped config it names, if any; else ``path``
    (whose reading then fails with the usual error)."""
    if path is None or os.path.exists(path):
        return path
    parts = pathlib.PurePath(path).parts
    if len(parts) == 1 or (len(parts) == 2 and parts[0] == "configs"):
        shipped = _shipped_folder() / parts[-1]
        if shipped.is_file():
            return str(shipped)
    return path
