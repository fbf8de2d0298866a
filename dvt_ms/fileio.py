"""Writing outputs so that nothing a user made is lost: atomic files and folders, output paths
checked before the work, a clear stop on a full disk, and the leftovers of killed writers removed.

Every temporary we create is named ``.dvt-tmp-<pid>@<host>-<random>[.ext]`` (files) or
``.dvt-staging-<pid>@<host>-<random>`` (folders), beside its destination, so that a later run can
tell ours from anything else: ``remove_stale_temporaries`` deletes those whose process is gone.
Files and folders get the modes the user's umask gives (0644 / 0755 typically), not the private
0600 / 0700 of ``tempfile`` or the 0400 MindSpore gives checkpoints and MindIR files.
"""
import dataclasses
import errno
import fnmatch
import logging
import os
import re
import shutil
import socket
import tempfile
import time
from contextlib import contextmanager

from .errors import DiskFullError, OutputPathError

__all__ = ["OutputFolderKind", "OutputFileKind", "atomic_write", "atomic_write_text", "through_safe_name",
           "staged_directory", "check_distinct_outputs", "check_output_file", "check_output_dir",
           "prepare_staged_directory", "remove_stale_temporaries", "apply_umask_modes", "format_bytes"]

_logger = logging.getLogger(__name__)

_TEMP_FILE = "tmp"
_TEMP_DIR = "staging"
_REPLACED = "replaced"   # an output folder's previous contents while its replacement moves in
# .dvt-<kind>-<pid>@<host>-<8 random characters of tempfile>[.<ext>]
_OURS = re.compile(r"^\.dvt-(?P<kind>tmp|staging)-(?P<pid>\d+)@(?P<host>.+?)-[a-z0-9_]{8}(\..*)?$")
_OURS_REPLACED = re.compile(r"^\.dvt-replaced-(?P<pid>\d+)@(?P<host>[^:]+):(?P<target>.+)$")
# What earlier versions left: tempfile's .tmp-<8>[.ext] (and MindSpore's .tmp-<8>.tmp) and .staging-<8>[.old].
_LEGACY = re.compile(r"^\.(tmp|staging)-[a-z0-9_]{8}(\.(ckpt|yaml|json|csv|tmp|old))?$")
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
_STARTED = time.time()   # anything of ours older than this cannot be this process's


def _host():
    return socket.gethostname().replace("/", "_").replace(":", "_") or "localhost"


def _prefix(kind):
    return f".dvt-{kind}-{os.getpid()}@{_host()}-"


def _umask():
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)   # the portable way to read it is to set it
    os.umask(mask)
    return mask


def _file_mode():
    return 0o666 & ~_umask()


def _dir_mode():
    return 0o777 & ~_umask()


def format_bytes(count):
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(count) < 1024 or unit == "TB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024.0
    return f"{count:.1f} TB"


def _free_space(directory):
    try:
        return format_bytes(shutil.disk_usage(directory).free)
    except OSError:
        return "unknown space"


def _disk_full(path, directory):
    return DiskFullError(f"no space left on the device to write {path} ({_free_space(directory)} free in "
                         f"{directory}); nothing was written and what was there before is intact. Free some "
                         "space and run the command again")


def _remove_temporary(tmp_path):
    """Remove ``tmp_path`` and MindSpore's own temporary beside it (its saver first writes
    ``<name>.tmp``, then renames that to the name it was given)."""
    for path in (tmp_path, os.path.splitext(tmp_path)[0] + ".tmp"):
        try:
            os.remove(path)
        except FileNotFoundError:
            pass


def atomic_write(path, write):
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then rename it over ``path``.

    ``path`` is then the old file or the complete new one, never a partial one; the new file gets
    the umask's mode. A full disk raises ``DiskFullError`` (the temporary removed)."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    handle, tmp_path = tempfile.mkstemp(prefix=_prefix(_TEMP_FILE), suffix=os.path.splitext(path)[1], dir=directory)
    os.close(handle)
    try:
        write(tmp_path)
        os.chmod(tmp_path, _file_mode())
        os.replace(tmp_path, path)
    except OSError as error:
        if error.errno in _DISK_FULL:
            raise _disk_full(path, directory) from None
        raise
    finally:
        _remove_temporary(tmp_path)


def atomic_write_text(path, text):
    def write(tmp_path):
        with open(tmp_path, "w", encoding="utf-8") as handle:
            handle.write(text)
    atomic_write(path, write)


# The file names mindspore.export accepts (mindspore/_checkparam.py, check_file_name_by_regular):
# the whole path, ASCII letters, digits and @_-.:/\ only (no space, no accent, no CJK).
_STRICT_FILE_NAME = re.compile(r"^[0-9a-zA-Z@_\-.:/\\]+$")


@contextmanager
def through_safe_name(path):
    """Yield a name for ``path`` that a writer with MindSpore's strict file-name rule accepts: ``path``
    itself when it passes, else a file in a private temporary folder (of TMPDIR), moved to ``path``
    once the writer is done (and removed if it fails). Any path of the user's works then."""
    if _STRICT_FILE_NAME.match(path):
        yield path
        return
    folder = tempfile.mkdtemp(prefix="dvt-safe-name-")
    try:
        safe = os.path.join(folder, "file" + os.path.splitext(path)[1])
        if not _STRICT_FILE_NAME.match(safe):
            raise OutputPathError(f"cannot write {path}: MindSpore takes only ASCII letters, digits and @_-.:/ "
                                  f"in file names, and the temporary folder {folder} has others too; set TMPDIR "
                                  "to a folder whose path has none")
        yield safe
        shutil.move(safe, path)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _first_existing(path):
    while not os.path.lexists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def _check_can_create_dir(directory, target):
    """``directory`` exists as a writable folder or can be created (its first existing ancestor is
    one); else ``OutputPathError`` saying why ``target`` cannot be written."""
    existing = _first_existing(directory)
    if not os.path.isdir(existing):
        raise OutputPathError(f"cannot write {target}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputPathError(f"cannot write {target}: no permission to write in {existing}")


@dataclasses.dataclass(frozen=True)
class OutputFileKind:
    """A kind of output file a command writes: it replaces an existing file only when ``recognise``
    says that file is such an output (one it wrote before), never anything else (docs/outputs.md)."""

    what: str          # e.g. "inference results", for messages
    recognise: object  # callable(path) -> bool, reading at most the start of the file


@dataclasses.dataclass(frozen=True)
class OutputFolderKind:
    """A kind of output folder a command writes whole (``staged_directory``): it replaces an existing
    folder only when the folder holds ``marker`` and nothing but names matching ``patterns``, i.e. is
    an output of that command (docs/outputs.md)."""

    what: str          # e.g. "an exported model", for messages
    marker: str        # the file every such folder holds
    patterns: tuple    # fnmatch patterns of every name the command writes there

    def foreign_names(self, folder):
        """Names in ``folder`` that such an output does not hold (sorted); our own temporaries aside."""
        return sorted(name for name in os.listdir(folder)
                      if not any(fnmatch.fnmatchcase(name, pattern) for pattern in self.patterns)
                      and not (_OURS.match(name) or _OURS_REPLACED.match(name)))

    def check_replaceable(self, folder, text, overwrite):
        """``OutputPathError`` unless the existing non-empty ``folder`` may be replaced: with
        ``overwrite``, and only when it is recognisably such an output."""
        foreign = self.foreign_names(folder)
        if foreign or not os.path.isfile(os.path.join(folder, self.marker)):
            example = f"it holds {_some(foreign)}" if foreign else f"it has no {self.marker}"
            raise OutputPathError(f"{text} is not {self.what} ({example}); nothing there is replaced: give an "
                                  "--out that is new, empty or an earlier output of this command")
        if not overwrite:
            raise OutputPathError(f"{text} holds {self.what} (pass --overwrite to replace it)")


def _some(names, shown=3):
    listed = ", ".join(names[:shown])
    return listed + (f" and {len(names) - shown} more" if len(names) > shown else "")


def _holds_working_directory(full):
    cwd = os.path.realpath(os.getcwd())
    target = os.path.realpath(full)
    return cwd == target or cwd.startswith(target.rstrip(os.sep) + os.sep)


def check_distinct_outputs(**named_paths):
    """``OutputPathError`` when two outputs (option name -> path, None skipped) are the same file."""
    seen = {}
    for option, path in named_paths.items():
        if path is None:
            continue
        real = os.path.realpath(os.path.abspath(str(path)))
        if real in seen:
            raise OutputPathError(f"--{seen[real]} and --{option} are the same file {path}; give each its own file")
        seen[real] = option


def check_output_file(*paths, kind=None):
    """Raise ``OutputPathError`` naming the path and the reason unless every given path (None
    skipped) can be written as a file: not a folder, its folder creatable and writable (files
    are written beside their destination, then renamed over it), and with ``kind`` (an
    ``OutputFileKind``) an existing file only when it is recognisably such an output."""
    for path in paths:
        if path is None:
            continue
        text = str(path)
        full = os.path.abspath(text)
        if text.endswith(os.sep) or os.path.isdir(full):
            raise OutputPathError(f"output file {text} is a folder; give a file name")
        if kind is not None and os.path.lexists(full) and not kind.recognise(full):
            raise OutputPathError(f"{text} exists and is not {kind.what} written by this command; it is left "
                                  "untouched: give a new file name")
        _check_can_create_dir(os.path.dirname(full), text)   # a file is replaced by renaming: the folder counts


def check_output_dir(path, kind=None, overwrite=False):
    """Raise ``OutputPathError`` naming the path and the reason unless ``path`` can take our output.

    ``kind`` (an ``OutputFolderKind``): the folder is written whole by ``staged_directory`` (beside
    it, then renamed into place), so its parent must be writable, and an existing non-empty folder
    is replaced only with ``overwrite`` and only when it is recognisably such an output; never the
    working directory or a folder holding it. Without ``kind`` the folder is written in place and
    must be (or become) a writable folder."""
    text = str(path)
    full = os.path.abspath(text)
    if os.path.lexists(full) and not os.path.isdir(full):
        raise OutputPathError(f"output folder {text} is a file, not a folder")
    if kind is not None:
        if os.path.isdir(full) and os.listdir(full):
            if _holds_working_directory(full):
                raise OutputPathError(f"{text} is the current folder or holds it; give a new folder for the output")
            kind.check_replaceable(full, text, overwrite)
        _check_can_create_dir(os.path.dirname(full), text)
    else:
        _check_can_create_dir(full, text)


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_stale(match, full_path):
    """A temporary of ours is stale when the process that made it is gone: on this host, when its
    process no longer runs; otherwise (another host, or our own pid reused) when it is older than
    this process."""
    pid = int(match.group("pid"))
    if match.group("host") == _host() and pid != os.getpid():
        return not _pid_alive(pid)
    return os.path.getmtime(full_path) < _STARTED


def _remove(path):
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            os.remove(path)
        except FileNotFoundError:
            pass


def remove_stale_temporaries(directory):
    """Remove what killed writers of ours left in ``directory``; returns the names removed.

    Temporary files and staging folders go; an output folder's previous contents that a killed
    replacement left aside are put back if the output is missing (else removed). Anything not
    named like ours, or still being written by a live process, is left alone."""
    if not os.path.isdir(directory):
        return []
    removed = []
    for name in sorted(os.listdir(directory)):
        full = os.path.join(directory, name)
        replaced = _OURS_REPLACED.match(name)
        if replaced:
            if not _is_stale(replaced, full):
                continue
            target = os.path.join(directory, replaced.group("target"))
            if os.path.lexists(target):
                _remove(full)
                removed.append(name)
            else:
                os.replace(full, target)
                _logger.warning("restored %s: a replacement of it was interrupted", target)
            continue
        ours = _OURS.match(name)
        if (ours and _is_stale(ours, full)) or (_LEGACY.match(name) and os.path.getmtime(full) < _STARTED):
            _remove(full)
            removed.append(name)
    if removed:
        _logger.info("removed %d temporary file(s) that interrupted writes left in %s: %s", len(removed),
                     directory, ", ".join(removed))
    return removed


def apply_umask_modes(root):
    """MindSpore writes checkpoints and MindIR files read-only for their owner (0400 / 0700): give
    everything under ``root`` the modes of the user's umask so others can read a deployed model."""
    file_mode, dir_mode = _file_mode(), _dir_mode()
    os.chmod(root, dir_mode)
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            os.chmod(os.path.join(folder, name), dir_mode)
        for name in files:
            os.chmod(os.path.join(folder, name), file_mode)


def prepare_staged_directory(out_dir, kind, overwrite=False):
    """Before the work whose result ``staged_directory`` will write to ``out_dir``: check the path
    (``OutputPathError``) and remove what killed writers of ours left beside it."""
    check_output_dir(out_dir, kind, overwrite)
    remove_stale_temporaries(os.path.dirname(os.path.abspath(out_dir)))


@contextmanager
def staged_directory(out_dir, kind, overwrite=False):
    """Yield a temporary sibling of ``out_dir`` to fill; on success it replaces ``out_dir``.

    An existing non-empty ``out_dir`` is replaced only with ``overwrite`` and only when it is an
    output of ``kind`` (``check_output_dir``); the previous output is removed only after the new one
    is in place. A full disk raises ``DiskFullError``; the temporary folder is removed and
    ``out_dir`` left as it was."""
    out_dir = os.path.abspath(out_dir)
    check_output_dir(out_dir, kind, overwrite)
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=_prefix(_TEMP_DIR), dir=parent)
    try:
        yield staging
        apply_umask_modes(staging)
        if os.path.exists(out_dir):
            previous = os.path.join(parent, f".dvt-{_REPLACED}-{os.getpid()}@{_host()}:{os.path.basename(out_dir)}")
            os.replace(out_dir, previous)
            os.replace(staging, out_dir)
            shutil.rmtree(previous)
        else:
            os.replace(staging, out_dir)
    except OSError as error:
        if error.errno in _DISK_FULL:
            raise _disk_full(out_dir, parent) from None
        raise
    finally:
        if os.path.isdir(staging):
            shutil.rmtree(staging)
