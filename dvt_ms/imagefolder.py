"""ImageNet-style class folders (``root/<class>/<image>``): the one rule for listing them.

Training, calibration, export (class names) and inference all list classes and images through
these functions, so they always agree on what a class is and which files are images.
"""
import os

__all__ = ["IMAGE_EXTENSIONS", "class_folders", "image_entries", "image_files"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def _visible(entry):
    return not entry.name.startswith(".")


def class_folders(root):
    """Sorted names of the class sub-folders of ``root``; hidden ones (``.ipynb_checkpoints``) are not classes."""
    return sorted(entry.name for entry in os.scandir(root) if entry.is_dir() and _visible(entry))


def image_entries(folder):
    """The image files directly in ``folder`` as ``os.DirEntry`` objects (their ``stat()`` is cached),
    sorted by name; images are recognised by extension, case-insensitive."""
    return sorted((entry for entry in os.scandir(folder)
                   if entry.is_file() and _visible(entry) and entry.name.lower().endswith(IMAGE_EXTENSIONS)),
                  key=lambda entry: entry.name)


def image_files(folder):
    """Sorted paths of the image files directly in ``folder``."""
    return [entry.path for entry in image_entries(folder)]
