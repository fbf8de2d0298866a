"""Checking image files once: every image decoded on the host, the results cached and shared.

``verify_image`` reads a file and decodes it with Pillow (JPEGs at 1/8 scale, which still reads
every entropy-coded byte): truncated, corrupt and unsupported files are found before training,
where MindSpore's decoder would replace them, or crash the process (some corrupt JPEGs raise
SIGFPE inside it). Every format Pillow reads is usable: the pipeline hands the ones MindSpore's
reader does not take (WebP, TIFF, ...) to Pillow (``folders.manifest_source``).

``ImageCheck`` runs the check over a split's listing with a cache keyed by (relative path, size,
mtime_ns) in a run folder, so a restart or resume re-checks only new or changed files. Under data
parallel only the writer (rank 0) lists and checks; it writes the result, tagged with a token all
ranks share for this start, and the other ranks wait for that file and read the same listing.
"""
import concurrent.futures
import hashlib
import io
import json
import logging
import os
import time

from PIL import Image

from ..errors import DataError
from ..fileio import atomic_write_text
from ..imagefolder import IMAGE_EXTENSIONS, class_folders, image_entries

__all__ = ["ImageCheck", "is_native", "list_split", "verify_image", "verify_images"]

_logger = logging.getLogger(__name__)

# Leading bytes of the formats MindSpore's manifest reader takes and its decoder reads as Pillow does
# (JPEG, PNG, BMP). It silently drops files of other formats (WebP, TIFF, ...) from a manifest.
_NATIVE_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"BM")
_HEAD_BYTES = 8
# format: (leading magic bytes, marker a complete file ends with). Some writers pad after the end
# marker, so it is looked for in the last kilobyte rather than in the last bytes only.
_COMPLETE_FILE_MARKERS = {"JPEG": (b"\xff\xd8", b"\xff\xd9"), "PNG": (b"\x89PNG", b"IEND")}
_TAIL_BYTES = 1024
_CACHE_VERSION = 1
_WAIT_LOG_SECONDS = 60


def is_native(head):
    """True if a file whose first 8 bytes are ``head`` is one MindSpore reads itself (JPEG, PNG, BMP)."""
    return len(head) >= _HEAD_BYTES and bytes(head[:_HEAD_BYTES]).startswith(_NATIVE_MAGIC)


def _truncation(data):
    """Why the encoded image ``data`` is visibly incomplete, or None."""
    if not data:
        return "empty file"
    for name, (magic, end_marker) in _COMPLETE_FILE_MARKERS.items():
        if data.startswith(magic) and end_marker not in data[-_TAIL_BYTES:]:
            return f"truncated {name} (no end-of-image marker)"
    return None


def verify_image(path):
    """None if ``path`` is a complete image this project can decode, else the reason it is not."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
        problem = _truncation(data)
        if problem is None:
            with Image.open(io.BytesIO(data)) as image:
                if image.format in ("JPEG", "MPO"):
                    image.draft("RGB", (max(1, image.width // 8), max(1, image.height // 8)))
                image.load()
        return problem
    except Exception as error:  # Pillow raises many types for bad files; all mean "unreadable"
        return f"{type(error).__name__}: {error}"


def verify_images(paths, num_threads=None):
    """``verify_image`` of every path, in order, on threads (Pillow decodes without the GIL)."""
    with concurrent.futures.ThreadPoolExecutor(num_threads or _default_threads()) as pool:
        return list(pool.map(verify_image, paths))


def _default_threads():
    return min(32, 4 * (os.cpu_count() or 1))


def list_split(root):
    """``(class folder names, files)`` of the image-folder split ``root``; files are
    ``(relative path, size, mtime_ns)`` in listing order (class by class, then by name).

    A missing root, a root without class folders or a class folder without images is a ``DataError``."""
    if not os.path.isdir(root):
        raise DataError(f"dataset folder {root} does not exist")
    folders = class_folders(root)
    if not folders:
        raise DataError(f"{root} has no class folders (expected {root}/<class>/<image>)")
    files = []
    for name in folders:
        entries = image_entries(os.path.join(root, name))
        if not entries:
            raise DataError(f"class folder {os.path.join(root, name)} has no images ({', '.join(IMAGE_EXTENSIONS)})")
        for entry in entries:
            stat = entry.stat()
            files.append((f"{name}/{entry.name}", stat.st_size, stat.st_mtime_ns))
    return folders, files


class ImageCheck:
    """Checks the images of splits, reusing earlier results and sharing them across ranks.

    ``cache_dir``: where results are kept (None: nothing kept). ``writer``: this process lists and
    checks (rank 0, or a single process); the others wait for the writer's file with ``token``
    (shared by all ranks for this start) and read it, for at most ``wait_seconds`` (then a
    ``DataError``: the writer's file never appeared, as when ``cache_dir`` is not shared between
    nodes). ``check``: False only lists (no decoding).
    """

    def __init__(self, cache_dir=None, writer=True, token=None, check=True, num_threads=None,
                 wait_seconds=None):
        if not writer and (cache_dir is None or token is None or wait_seconds is None):
            raise ValueError("a reader needs the writer's cache_dir and token, and a time limit")
        self.cache_dir = cache_dir
        self.writer = writer
        self.token = token
        self.check = check
        self.num_threads = num_threads or _default_threads()
        self.wait_seconds = wait_seconds

    def _cache_path(self, root):
        root = os.path.abspath(root)
        key = hashlib.sha1(root.encode("utf-8", "surrogateescape")).hexdigest()[:10]
        return os.path.join(self.cache_dir, f"{os.path.basename(root) or 'root'}-{key}.json")

    def split(self, root, check_folders=None):
        """``(class folder names, files)`` of ``root``: files are ``(relative path, problem)`` in
        listing order, problem None for a usable (or unchecked) file. Raises ``DataError`` as
        ``list_split``, or as ``check_folders(folder names)`` does, called before any image is checked."""
        if not self.writer:
            folders, files = self._read_shared(root)
            if check_folders is not None:
                check_folders(folders)
            return folders, files
        try:
            folders, listed = list_split(root)
            if check_folders is not None:
                check_folders(folders)
        except DataError as error:
            self._announce(root, str(error))
            raise
        files = self._checked(root, listed) if self.check else [(rel, None) for rel, _, _ in listed]
        self._announce(root, None)
        return folders, files

    def _checked(self, root, listed):
        cache_path = self._cache_path(root) if self.cache_dir else None
        known = self._load(cache_path) if cache_path else {}
        results, todo = [], []
        for position, (rel, size, mtime) in enumerate(listed):
            entry = known.get(rel)
            if entry is not None and entry[0] == size and entry[1] == mtime:
                results.append(entry[2])
            else:
                results.append(None)
                todo.append(position)
        if todo:
            started = time.perf_counter()
            _logger.info("%s: checking %d of %d images (%d unchanged since an earlier check)", root, len(todo),
                         len(listed), len(listed) - len(todo))
            paths = [os.path.join(root, listed[position][0]) for position in todo]
            for position, result in zip(todo, verify_images(paths, self.num_threads)):
                results[position] = result
            _logger.info("%s: checked %d images in %.1f s", root, len(todo), time.perf_counter() - started)
        else:
            _logger.info("%s: all %d images unchanged since an earlier check", root, len(listed))
        if cache_path and (todo or len(known) != len(listed)):
            content = {"version": _CACHE_VERSION, "root": os.path.abspath(root),
                       "files": [[rel, size, mtime, problem] for (rel, size, mtime), problem in zip(listed, results)]}
            atomic_write_text(cache_path, json.dumps(content, separators=(",", ":"), ensure_ascii=False))
        return [(rel, problem) for (rel, _, _), problem in zip(listed, results)]

    @staticmethod
    def _read_json(path):
        try:
            with open(path, encoding="utf-8") as handle:
                return json.load(handle)
        except (OSError, ValueError):
            return None

    def _load(self, cache_path):
        content = self._read_json(cache_path)
        try:
            if content is None or content.get("version") != _CACHE_VERSION:
                return {}
            return {rel: (size, mtime, problem) for rel, size, mtime, problem in content["files"]}
        except (KeyError, TypeError, ValueError):
            return {}  # a cache we cannot use: everything is checked again

    def _announce(self, root, error):
        """Tell the waiting ranks the cache is ready for this start (or that listing failed)."""
        if self.token is not None and self.cache_dir:
            atomic_write_text(self._cache_path(root) + ".ready",
                              json.dumps({"token": self.token, "error": error}))

    def _read_shared(self, root):
        path = self._cache_path(root)
        logged, started = 0.0, time.monotonic()
        while True:
            ready = self._read_json(path + ".ready")
            if ready is not None and ready.get("token") == self.token:
                break
            waited = time.monotonic() - started
            if waited > self.wait_seconds:
                raise DataError(
                    f"waited {waited:.0f} s for rank 0's image check of {root}: {path}.ready never appeared "
                    f"(output_dir must be on a filesystem every node shares; if rank 0 is still checking a slow "
                    f"filesystem, raise image_check_wait_minutes)")
            if waited > logged + _WAIT_LOG_SECONDS:
                logged = time.monotonic() - started
                _logger.warning("waited %.0f s for rank 0's image check of %s in %s (output_dir must be on a "
                                "filesystem every node shares)", logged, root, path)
            time.sleep(0.2)
        if ready.get("error"):
            raise DataError(ready["error"])
        files = self._load(path)
        rels = list(files)
        folders = sorted({rel.split("/", 1)[0] for rel in rels})
        return folders, [(rel, files[rel][2]) for rel in rels]
