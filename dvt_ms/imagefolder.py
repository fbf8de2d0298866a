"""ImageNet-style class folders (``root/<class>/<image>``): the one rule for listing them.

Training, calibration, export (class names) and inference all list classes and images through
these functions, so they always agree on what a class is and which files are images. An entry
that cannot be resolved (a symlink loop, a dangling link, no permission to stat it) is left out
with a warning naming it, never a traceback.
"""
import logging
import os

__all__ = ["IMAGE_EXTENSIONS", "class_folders", "image_entries", "image_files"]

_logger = logging.getLogger(__name__)

# GIF: the first frame of an animation (dvt_ms.imagedecode), on every path alike.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")


def _visible(entry):
    return not entry.name.startswith(".")


def _resolved(entries, relevant, wanted):
    """The ``relevant`` entries for which ``wanted(entry)`` is true; relevant ones that cannot be
    resolved are named in a warning."""
    for entry in entries:
        if not relevant(entry):
            continue
        try:
            if wanted(entry):
                yield entry
            elif entry.is_symlink() and not os.path.exists(entry.path):
                _logger.warning("leaving out %s: a symbolic link to nothing (%s)", entry.path,
                                os.readlink(entry.path))
        except OSError as error:
            _logger.warning("leaving out %s: %s", entry.path, error.strerror or error)


def class_folders(root):
    """Sorted names of the class sub-folders of ``root``; hidden ones (``.ipynb_checkpoints``) are not classes."""
    with os.scandir(root) as entries:
        return sorted(entry.name for entry in _resolved(entries, _visible, os.DirEntry.is_dir))


def _image_named(entry):
    return _visible(entry) and entry.name.lower().endswith(IMAGE_EXTENSIONS)


def _is_image(entry):
    entry.stat()   # resolves links (a loop raises here) and caches the result for the callers
    return entry.is_file()


def image_entries(folder):
    """The image files directly in ``folder`` as ``os.DirEntry`` objects (their ``stat()`` is cached),
    sorted by name; images are recognised by extension, case-insensitive."""
    with os.scandir(folder) as entries:
        return sorted(_resolved(entries, _image_named, _is_image), key=lambda entry: entry.name)


def image_files(folder):
    """Sorted paths of the image files directly in ``folder``."""
    return [entry.path for entry in image_entries(folder)]
