"""Image-folder datasets: every image found, checked, and named when it cannot be read.

Classes and images are listed by ``dvt_ms.imagefolder`` (the one rule everywhere). With
``verify``, the folder is checked on start (PIL header check plus, for JPEG/PNG, the end-of-image
marker that truncated files lack) and bad files are left out with a warning naming each; a file
that goes bad later is checked the same way as it is read and replaced by the next image with a
warning. Replacing rather than dropping keeps every rank's batch count equal.
"""
import concurrent.futures
import logging
import os

import numpy as np
from PIL import Image

from ..errors import DataError
from ..imagefolder import IMAGE_EXTENSIONS, class_folders, image_files

__all__ = ["ImageFolderSource", "verify_image"]

_logger = logging.getLogger(__name__)

# format: (leading magic bytes, marker a complete file ends with). Some writers pad after the end
# marker, so it is looked for in the last kilobyte rather than in the last bytes only.
_COMPLETE_FILE_MARKERS = {"JPEG": (b"\xff\xd8", b"\xff\xd9"), "PNG": (b"\x89PNG", b"IEND")}
_TAIL_BYTES = 1024


def _truncation(head, tail):
    """Why an encoded image whose first bytes are ``head`` and last kilobyte ``tail`` is incomplete, or None."""
    if not head:
        return "empty file"
    for name, (magic, end_marker) in _COMPLETE_FILE_MARKERS.items():
        if head.startswith(magic) and end_marker not in tail:
            return f"truncated {name} (no end-of-image marker)"
    return None


def verify_image(path):
    """None if ``path`` looks like a complete, readable image, else the reason it is not.

    Reads the header (PIL ``verify``) and the last kilobyte; a full decode is left to the pipeline.
    """
    try:
        with Image.open(path) as image:
            image.verify()
        with open(path, "rb") as f:
            head = f.read(8)
            f.seek(max(0, os.path.getsize(path) - _TAIL_BYTES))
            return _truncation(head, f.read())
    except Exception as error:  # PIL raises many types for bad files; all mean "unreadable"
        return f"{type(error).__name__}: {error}"


class ImageFolderSource:
    """Random-access source over ``root/class/*.jpg`` yielding (encoded bytes, label).

    Classes are the sorted sub-folder names (label = position), files the sorted image files. A
    missing folder, no class folders or an empty class folder is a ``DataError``. With ``verify``,
    unreadable files are left out and each is named in a warning.
    """

    column_names = ["image", "label"]

    def __init__(self, root, verify=True, num_threads=16):
        if not os.path.isdir(root):
            raise DataError(f"dataset folder {root} does not exist")
        self.classes = class_folders(root)
        if not self.classes:
            raise DataError(f"{root} has no class folders (expected {root}/<class>/<image>)")
        samples = []
        for label, name in enumerate(self.classes):
            folder = os.path.join(root, name)
            files = image_files(folder)
            if not files:
                raise DataError(f"class folder {folder} has no images ({', '.join(IMAGE_EXTENSIONS)})")
            samples.extend((path, label) for path in files)
        if verify:
            samples = self._drop_unreadable(samples, root, num_threads)
        self.samples = samples

    @staticmethod
    def _drop_unreadable(samples, root, num_threads):
        with concurrent.futures.ThreadPoolExecutor(num_threads) as pool:
            problems = list(pool.map(verify_image, (path for path, _ in samples)))
        kept = []
        for (path, label), problem in zip(samples, problems):
            if problem is None:
                kept.append((path, label))
            else:
                _logger.warning("skipping unreadable image %s: %s", path, problem)
        if len(kept) < len(samples):
            _logger.warning("%s: left out %d of %d images", root, len(samples) - len(kept), len(samples))
        if not kept:
            raise DataError(f"{root}: no readable images")
        return kept

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, index):
        # A file that cannot be read or is visibly cut off is named and replaced by the next one, so
        # every rank still yields the same number of samples.
        for offset in range(len(self.samples)):
            path, label = self.samples[(index + offset) % len(self.samples)]
            try:
                with open(path, "rb") as f:
                    data = f.read()
                problem = _truncation(data[:8], data[-_TAIL_BYTES:])
            except OSError as error:
                problem = error.strerror or str(error)
            if problem is None:
                return np.frombuffer(data, dtype=np.uint8), np.int32(label)
            _logger.warning("skipping unreadable image %s: %s; the next image takes its place", path, problem)
        raise DataError("no image of the dataset can be read")
