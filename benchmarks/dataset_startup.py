"""What opening a training split costs at start-up, by file count: before and after the check cache.

    python benchmarks/dataset_startup.py [--files 100000] [--classes 100] [--before_ref main]

Writes ``--files`` tiny PNGs (8x8, ~100 bytes: it is the file count that matters) into a temporary
folder (removed afterwards) and times
  before:       the image-folder source of git ref ``--before_ref`` (if given and readable with git),
                which every rank ran on every start and resume;
  after, cold:  ``ImageCheck`` with an empty cache (first start of a run: every image decoded);
  after, warm:  the same with the cache (a restart or resume: listing and size/mtime only);
  after, warm, 1% changed: 1% of the files rewritten since the last start;
  after, other rank: a rank that waits for rank 0's result and reads it (no listing, no checks).
"""
import io
import os
import shutil
import subprocess
import sys
import tempfile
import time
import types

from PIL import Image

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from dvt_ms import cli  # noqa: E402
from dvt_ms.data.imagecheck import ImageCheck  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_files(root, count, classes):
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (120, 60, 30)).save(buffer, format="PNG")
    data = buffer.getvalue()
    for index in range(count):
        folder = os.path.join(root, f"class_{index % classes:04d}")
        if index < classes:
            os.makedirs(folder)
        with open(os.path.join(folder, f"{index:07d}.png"), "wb") as handle:
            handle.write(data)


def source_at(ref):
    """The ImageFolderSource class of ``dvt_ms/data/folders.py`` at git ref ``ref``, or None."""
    try:
        text = subprocess.run(["git", "-C", REPO, "show", f"{ref}:dvt_ms/data/folders.py"], check=True,
                              capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    module = types.ModuleType("dvt_ms.data._folders_before")
    module.__package__ = "dvt_ms.data"
    exec(compile(text, f"{ref}:dvt_ms/data/folders.py", "exec"), module.__dict__)
    return getattr(module, "ImageFolderSource", None)


def timed(function):
    started = time.perf_counter()
    result = function()
    return time.perf_counter() - started, result


def main(argv=None):
    parser = cli.argument_parser("benchmarks/dataset_startup.py", __doc__)
    parser.add_argument("--files", type=int, default=100000)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--before_ref", default="main", help="git ref of the 'before' code ('' to skip)")
    args = parser.parse_args(argv)
    work = tempfile.mkdtemp(prefix="dvt-startup-bench-")
    try:
        root, cache = os.path.join(work, "train"), os.path.join(work, "run", "image_check")
        seconds, _ = timed(lambda: write_files(root, args.files, args.classes))
        print(f"{args.files} files of {os.path.getsize(os.path.join(root, 'class_0000', '0000000.png'))} bytes in "
              f"{args.classes} class folders (written in {seconds:.1f} s)")
        rows = []
        before = source_at(args.before_ref) if args.before_ref else None
        if before is not None:
            seconds, source = timed(lambda: before(root, verify=True))
            rows.append((f"before ({args.before_ref}): every rank, every start", seconds, len(source)))
        seconds, (_, files) = timed(lambda: ImageCheck(cache, token=1).split(root))
        rows.append(("after, cold (rank 0, first start: every image decoded)", seconds, len(files)))
        seconds, (_, files) = timed(lambda: ImageCheck(cache, token=2).split(root))
        rows.append(("after, warm (rank 0, restart or resume)", seconds, len(files)))
        seconds, (_, files) = timed(lambda: ImageCheck(cache, writer=False, token=2).split(root))
        rows.append(("after, any other rank (reads rank 0's result)", seconds, len(files)))
        changed = sorted(os.path.join(folder, name) for folder, _, names in os.walk(root) for name in names)
        for path in changed[::100]:
            os.utime(path, ns=(0, os.stat(path).st_mtime_ns + 1))
        seconds, (_, files) = timed(lambda: ImageCheck(cache, token=3).split(root))
        rows.append(("after, warm with 1% of the files changed", seconds, len(files)))
        print("| start | seconds | images |")
        print("|---|---|---|")
        for name, seconds, count in rows:
            print(f"| {name} | {seconds:.2f} | {count} |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
