"""Image-folder samples as a native MindSpore source, read in C++ in exactly our order.

Each pipeline reads a list of files (one epoch of one rank, say) through ``ds.ManifestDataset``:
the files and their labels are written to a manifest in that order, so MindSpore's reader needs
no listing of its own and no sampler, and reads and decodes without the Python GIL. A second
column, ``index``, carries each sample's index in its split through the pipeline, which is how
replaced samples are found later (``batches.SampleTracker``).

MindSpore's manifest reader silently drops files it does not recognise by their first bytes
(WebP, TIFF, ...) and fails on files of a few bytes, either of which would shift the index column
against the images. So the first bytes of every file are read here: JPEG, PNG and BMP files go to
the manifest as they are; for any other file (or one that vanished or shrank) a placeholder takes
its row, and a Python step puts the file's Pillow decode in its place (``_PillowDecoded``). The
index column is read in C++ too (a CSV file), so no Python runs per sample for ordinary files.
"""
import atexit
import concurrent.futures
import io
import json
import logging
import os
import shutil
import tempfile
import weakref

import mindspore.dataset as ds
import numpy as np
from PIL import Image

from ..imagedecode import UnreadableImageError, decode_rgb
from .imagecheck import is_native

__all__ = ["index_source", "manifest_source"]

_logger = logging.getLogger(__name__)

_MANIFEST_DIR = None
# First bytes are read by a few threads, a chunk of files each (fast on a local disk, where one
# thread per file costs more than the reads, and on network storage, where latency dominates).
_HEAD_THREADS = 8
_HEAD_CHUNK = 1024


def _manifest_dir():
    """One private temporary folder per process for the manifests, removed at exit."""
    global _MANIFEST_DIR
    if _MANIFEST_DIR is None:
        _MANIFEST_DIR = tempfile.mkdtemp(prefix="dvt-manifests-")
        atexit.register(shutil.rmtree, _MANIFEST_DIR, ignore_errors=True)
    return _MANIFEST_DIR


def _placeholder():
    """A valid 1x1 PNG that stands in the manifest for the files Pillow reads."""
    path = os.path.join(_manifest_dir(), "placeholder.png")
    if not os.path.exists(path):
        Image.new("RGB", (1, 1)).save(path)
    return path


def _temporary(suffix):
    return tempfile.NamedTemporaryFile("w", encoding="utf-8", suffix=suffix, dir=_manifest_dir(), delete=False)


def index_source(indices):
    """A MindSpore dataset of one int32 column ``index``: ``indices`` in order, read in C++ (a CSV
    file deleted with the dataset), to zip beside a source of the same samples."""
    with _temporary(".csv") as handle:
        handle.write("\n".join(str(int(i)) for i in indices))
        handle.write("\n")
    source = ds.CSVDataset(handle.name, column_defaults=[0], column_names=["index"], shuffle=False,
                           num_parallel_workers=1)
    weakref.finalize(source, os.remove, handle.name)
    return source


def _head(path):
    try:
        with open(path, "rb") as handle:
            return handle.read(8)
    except OSError:
        return b""


def _heads(paths):
    """The first 8 bytes of each file (b"" for one that cannot be opened)."""
    chunks = [paths[start:start + _HEAD_CHUNK] for start in range(0, len(paths), _HEAD_CHUNK)]
    if len(chunks) <= 1:
        return [_head(path) for path in paths]
    with concurrent.futures.ThreadPoolExecutor(min(_HEAD_THREADS, len(chunks))) as pool:
        return [head for chunk in pool.map(lambda chunk: [_head(path) for path in chunk], chunks) for head in chunk]


class _PillowDecoded:
    """Pipeline step on (image, index): the rows of ``via_pillow`` (index -> path) get their file
    decoded by the project's one rule (``imagedecode.decode_rgb``, as inference decodes) and
    re-encoded as BMP, lossless, for MindSpore."""

    def __init__(self, via_pillow):
        self.via_pillow = via_pillow

    def __call__(self, image, index):
        path = self.via_pillow.get(int(index))
        if path is None:
            return image, index
        try:
            rgb = decode_rgb(path)
        except UnreadableImageError as error:
            if os.path.isdir(os.path.dirname(path)):   # a vanished folder is reported once, by the tracker
                _logger.warning("image %s cannot be read: %s", path, error)
            raise
        encoded = io.BytesIO()
        Image.fromarray(rgb).save(encoded, format="BMP")
        return np.frombuffer(encoded.getvalue(), np.uint8), index


def manifest_source(root, files, labels, indices, num_classes, num_workers):
    """A MindSpore dataset with columns ``image`` (encoded bytes), ``label`` and ``index`` reading
    ``root/files[i]`` for i in ``indices``, in that order. Its manifest is deleted with the dataset."""
    indices = np.asarray(indices, np.int64).tolist()
    paths = [os.path.join(root, files[i]) for i in indices]
    placeholder, via_pillow = None, {}
    with _temporary(".manifest") as handle:
        for i, path, head in zip(indices, paths, _heads(paths)):
            source = path
            if not is_native(head):
                placeholder = placeholder or _placeholder()
                source = placeholder
                via_pillow[i] = path
            handle.write(f'{{"source": {json.dumps(source, ensure_ascii=False)}, "usage": "train", '
                         f'"annotation": [{{"name": "{labels[i]}"}}]}}\n')
    images = ds.ManifestDataset(handle.name, usage="train", shuffle=False, num_parallel_workers=num_workers,
                                class_indexing={str(label): label for label in range(num_classes)})
    weakref.finalize(images, os.remove, handle.name)
    source = ds.zip((images, index_source(indices)))
    if via_pillow:
        source = source.map(_PillowDecoded(via_pillow), input_columns=["image", "index"],
                            output_columns=["image", "index"], num_parallel_workers=num_workers)
    return source
