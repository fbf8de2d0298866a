"""The early-exit engine: the exported exits as GraphCells, run with real early exit.

An ``EarlyExitRun`` takes images as they come (``push``) and keeps a queue in front of every exit.
Exit k runs whenever its queue holds a full batch; the images whose confidence reaches exit k's
threshold are answered, the others join exit k+1's queue with their reuse tensors (gathered on the
device). So every exit runs full batches, whatever share of the images reaches it, and ``finish``
runs what is left. With a batch size of 1 every image goes through at once (streaming).

The exit rule is the contract's (``dvt_ms.contract.exit_rule``: float32 softmax on the host,
``confidence >= threshold``, the last exit answers the rest), the one calibration evaluates, so the
engine and the offline evaluation agree image by image.
"""
import contextlib
import logging
import os
import sys
import tempfile

import numpy as np

from ..contract.exit_rule import accepts, softmax, top_classes
from ..contract.manifest import load_manifest
from ..errors import InferenceError, ManifestError

__all__ = ["bucket_sizes", "choose_batch_size", "warn_if_made_for_another_device", "EarlyExitEngine", "EarlyExitRun"]

LOGGER = logging.getLogger(__name__)

# A graph call has a fixed cost (dispatch, input and output copies: ~1 ms on a CPU whatever its size)
# and so do the few tensor operations the engine runs between exits; a call that carries at least
# this many GMACs of its stage keeps them about 1 % of the work on a CPU and below that on a device.
# Not more: activations grow with the batch (T2T-12's exit 3 peaks at 7.4 GB resident at batch 32,
# 13.8 GB at 64, on a CPU), and the batch doubles past the first power of two that carries it.
CALL_GMACS = 12.0
# Beyond this the work per call no longer grows cheaper, and the late exits, which see a share of
# the images, run fewer and more padded calls: on the demo model (1200 images, CPU) 512 delivered
# 0.94-0.99 of the FLOPs-predicted speedup, 1024 0.72-0.96 (docs/performance.md).
LARGEST_BATCH = 512
# The reuse tensors an exit hands on, per call: they wait in front of the next exit.
REUSE_BYTES_PER_CALL = 512 * 2 ** 20


def warn_if_made_for_another_device(manifest, device, source):
    """Log (and return) a warning when ``manifest``'s graphs were made for another device than
    ``device``; None when they fit. Only the T2T soft split differs (Im2Col for the CPU, an AI CPU
    kernel on Ascend; slices elsewhere, slower on a CPU), so the answers are the same and only the
    speed suffers."""
    target = manifest.get("graph_target")
    family = (manifest.get("architecture") or {}).get("family")
    if target is None or target == device or family != "t2t":
        return None
    warning = (f"{source}: the graphs were exported for {target} (graph_target) and run on {device}: the answers "
               f"are the same, the T2T soft split is slower; export again with --graph_target {device} for this device")
    LOGGER.warning(warning)
    return warning


def bucket_sizes(max_batch):
    """Batch sizes the exits run at: powers of two up to ``max_batch``, and ``max_batch`` itself."""
    sizes, size = [], 1
    while size < max_batch:
        sizes.append(size)
        size *= 2
    return sizes + [max_batch]


def _power_of_two_at_least(value):
    return 1 << max(0, int(np.ceil(np.log2(max(value, 1)))))


def choose_batch_size(manifest, num_images=None):
    """Images per exit call for ``num_images`` inputs (None: a stream of unknown length) of the
    model ``manifest`` describes: a power of two large enough that a call of its cheapest exit
    carries ``CALL_GMACS`` (small models need large batches, full presets 16-32), at most half the
    inputs (rounded up to a power of two: exit 1 runs at least two calls, so a later exit is not left
    one padded remainder), and small enough that the reuse tensors of one call stay within ``REUSE_BYTES_PER_CALL``."""
    exits = manifest["exits"]
    wanted = _power_of_two_at_least(CALL_GMACS / max(min(info["stage_gflops"] for info in exits), 1e-9))
    reuse_bytes = max(4 * sum(int(np.prod(item["shape"][1:])) for item in info["outputs"][1:]) for info in exits)
    memory_cap = 1 << int(np.floor(np.log2(max(REUSE_BYTES_PER_CALL // max(reuse_bytes, 1), 1))))
    batch = min(wanted, memory_cap, LARGEST_BATCH)
    if num_images is not None:
        batch = min(batch, _power_of_two_at_least(-(-num_images // 2)))
    return max(batch, 1)


@contextlib.contextmanager
def _native_stderr_captured():
    """Capture what is written to file descriptor 2 (MindSpore's C++ log) while the block runs;
    the text is in the yielded list afterwards.

    MindSpore's loader logs a failure in lines of its own before raising; captured, a bad file
    ends the command with one line that names it."""
    sys.stderr.flush()
    captured, saved = [], os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield captured
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            captured.append(capture.read().decode(errors="replace"))


def _load_graph(path):
    """``path`` as a GraphCell, or a ManifestError naming it when it is no MindIR MindSpore can load."""
    import mindspore as ms
    from mindspore import nn
    with _native_stderr_captured() as log:
        try:
            graph = ms.load(path)
        except (RuntimeError, ValueError) as err:
            graph, failure = None, _first_line(err)
    if graph is None:
        raise ManifestError(f"{path}: cannot load this MindIR file (truncated or corrupt?): {failure}")
    sys.stderr.write("".join(log))      # what loading a good file logs is passed on
    return nn.GraphCell(graph)


def _first_line(err):
    """The first line of ``err`` that says something (MindSpore's messages can start with rules of
    dashes and "- Section:" headings)."""
    lines = [line.strip() for line in str(err).splitlines()]
    return next((line for line in lines if any(c.isalnum() for c in line) and not line.startswith("- ")),
                type(err).__name__)


def _is_out_of_memory(err):
    text = str(err).lower()
    return "memory not enough" in text or ("memory" in text and "alloc" in text and "fail" in text)


class EarlyExitEngine:
    """The exported exits of ``model_dir`` as GraphCells.

    ``max_batch`` None chooses it from the model's cost (``choose_batch_size``; pass
    ``num_images`` when the number of inputs is known). The exits run at the bucket sizes (``bucket_sizes(max_batch)``) only, smaller batches padded
    up to one: each new input shape costs MindSpore a recompilation (~0.2 s on CPU, seconds for
    large models), so a handful of shapes, compiled once by ``warm_up``, beats a new shape at
    almost every call."""

    def __init__(self, model_dir, manifest=None, max_batch=None, num_images=None):
        import mindspore as ms
        if max_batch is not None and max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self._ms = ms
        self.manifest = manifest or load_manifest(model_dir)
        max_batch = max_batch or choose_batch_size(self.manifest, num_images)
        self.files = [os.path.join(model_dir, info["file"]) for info in self.manifest["exits"]]
        self.exits = [_load_graph(path) for path in self.files]
        self.cumulative_gflops = [info["cumulative_gflops"] for info in self.manifest["exits"]]
        self.max_batch = max_batch
        self.buckets = bucket_sizes(max_batch)

    @property
    def num_exits(self):
        return len(self.exits)

    @property
    def image_shape(self):
        size = self.manifest["preprocess"]["img_size"]
        return (3, size, size)

    def warm_up(self):
        """Run every exit once at every bucket size, so that timing excludes compilation.

        A graph that does not take what the manifest says (another model's file, say) is a
        ManifestError naming its file."""
        ms = self._ms
        for bucket in self.buckets:
            reused = ()
            images = ms.Tensor(np.zeros((bucket,) + self.image_shape, np.float32))
            for k in range(self.num_exits):
                try:
                    reused = tuple(self.call_exit(k, images, reused)[1:])
                except (RuntimeError, TypeError, ValueError) as err:
                    if _is_out_of_memory(err):
                        raise InferenceError(f"{self.files[k]}: out of memory at batch size {bucket} "
                                             f"({_first_line(err)}); a smaller --batch_size needs less") from None
                    raise ManifestError(f"{self.files[k]}: the graph does not take the inputs manifest.yaml "
                                        f"gives it ({len(reused) + 1} tensors, images {tuple(images.shape)}): "
                                        f"{_first_line(err)}") from None

    def bucket(self, count):
        return next(b for b in self.buckets if b >= count)

    def call_exit(self, k, images, reused):
        """Exit ``k`` on ``images`` (a Tensor) and the previous exit's reuse tensors: its outputs."""
        return self.exits[k](images, *reused)

    def every_exit(self, images):
        """Every exit on every image (no early exit): (K, B, C) logits of ``images`` (B, 3, S, S),
        in batches of at most ``max_batch``."""
        return np.concatenate([self._every_exit_batch(images[start:start + self.max_batch])
                               for start in range(0, len(images), self.max_batch)], axis=1)

    def _every_exit_batch(self, images):
        count = len(images)
        batch = self._ms.Tensor(_pad_rows(images, self.bucket(count)))
        logits, reused = [], ()
        for k in range(self.num_exits):
            outputs = self.call_exit(k, batch, reused)
            logits.append(outputs[0].asnumpy()[:count])
            reused = tuple(outputs[1:])
        return np.stack(logits)

    def run(self, exit_thresholds, batch_size=None, top_k=1, policy=None):
        """A new ``EarlyExitRun`` with these thresholds (one per exit; the last is ignored), or
        with a policy that sets them as it runs (``EarlyExitRun``)."""
        return EarlyExitRun(self, exit_thresholds, batch_size or self.max_batch, top_k, policy)

    def classify(self, images, exit_thresholds):
        """(exit index, class, confidence) arrays over ``images`` (B, 3, S, S) float32, preprocessed
        (``dvt_ms.deploy.Classifier`` takes files, PIL images or pixels and gives class names)."""
        run = self.run(exit_thresholds)
        run.push(images)
        run.finish()
        return run.results()


def _pad_rows(array, size):
    """``array`` with its last row repeated up to ``size`` rows."""
    missing = size - len(array)
    return np.concatenate([array, np.repeat(array[-1:], missing, axis=0)]) if missing else array


class _Queue:
    """Images waiting in front of one exit: their positions and pixels (host), and the previous
    exit's reuse outputs (device) with the rows of them that belong to these images. The rows are
    gathered only when a call takes them, in one gather per reuse tensor that pads the batch too."""

    def __init__(self):
        self.chunks = []        # (positions, images, reuse outputs of one call, their rows)
        self.size = 0

    def add(self, positions, images, reused, rows):
        self.chunks.append((positions, images, reused, rows))
        self.size += len(positions)

    def take(self, count):
        """The first ``count`` waiting images as a list of chunks in order."""
        taken, size = [], 0
        while size < count:
            positions, images, reused, rows = self.chunks.pop(0)
            need = count - size
            if len(positions) > need:   # split the chunk: the rest stays first in line
                rest = None if rows is None else rows[need:]
                rows = None if rows is None else rows[:need]
                self.chunks.insert(0, (positions[need:], images[need:], reused, rest))
                positions, images = positions[:need], images[:need]
            taken.append((positions, images, reused, rows))
            size += len(positions)
        self.size -= count
        return taken


def _reuse_inputs(chunks, bucket, ms, ops):
    """The reuse tensors of the images in ``chunks``, padded to ``bucket`` rows by repeating the last:
    one gather per tensor (one concatenation more when the images come from several calls), and
    none when they are every row of one call's outputs, in order."""
    if not chunks[0][2]:
        return ()
    rows, offset, sources = [], 0, []
    for _, _, reused, chunk_rows in chunks:
        if not sources or reused is not sources[-1]:
            if sources:
                offset += len(sources[-1][0])
            sources.append(reused)
        rows.append(chunk_rows + offset)
    rows = np.concatenate(rows)
    rows = np.concatenate([rows, np.repeat(rows[-1:], bucket - len(rows))])
    if len(sources) == 1:
        if len(rows) == len(sources[0][0]) and (rows == np.arange(len(rows))).all():
            return sources[0]
        tensors = sources[0]
    else:
        tensors = tuple(ops.concat(parts, axis=0) for parts in zip(*sources))
    index = ms.Tensor(rows.astype(np.int32))
    return tuple(ops.gather(tensor, index, 0) for tensor in tensors)


class EarlyExitRun:
    """Early-exit classification of a stream of images (see the module docstring).

    ``push(images)`` queues images (B, 3, S, S) and runs every exit that has a full batch;
    ``finish()`` runs the rest; ``results()`` gives (exit index, class, confidence) per image in
    push order, and ``top_k()`` the ``top_k`` best classes and their scores at the answering exit.
    ``answered`` counts the images classified so far (all of them after a push when the batch
    size is 1).

    A ``policy`` (``controller.BudgetController``, ``deadline.DeadlinePolicy``) steers the run: it
    gives the thresholds of every exit call (``thresholds_for_next_call()``), hears of every push
    (``images_pushed(count)``) and of every exit call (``exit_ran(k, positions, confidences,
    answered)``), and returns which of that call's images are answered."""

    def __init__(self, engine, exit_thresholds, batch_size, top_k=1, policy=None):
        from mindspore import ops
        if len(exit_thresholds) != engine.num_exits:
            raise ValueError(f"{len(exit_thresholds)} thresholds for {engine.num_exits} exits")
        if batch_size not in engine.buckets:
            raise ValueError(f"batch size {batch_size} is not one of the engine's compiled sizes {engine.buckets}")
        self.engine = engine
        self.batch_size = batch_size
        self.thresholds = np.asarray(exit_thresholds, np.float32)
        self.top_k_count = max(1, int(top_k))
        self.policy = policy
        self.queues = [_Queue() for _ in range(engine.num_exits)]
        self.pushed = 0
        self.answered = 0
        self._answers = []      # (positions, exit index, top classes, their scores) per exit call
        self._ops = ops

    def push(self, images):
        images = np.asarray(images, np.float32)
        if len(images):
            if self.policy is not None:
                self.policy.images_pushed(len(images))
            self.queues[0].add(np.arange(self.pushed, self.pushed + len(images)), images, (), None)
            self.pushed += len(images)
        self._drain(full_batches_only=True)

    def finish(self):
        self._drain(full_batches_only=False)

    def _drain(self, full_batches_only):
        for k, queue in enumerate(self.queues):
            while queue.size >= self.batch_size or (queue.size and not full_batches_only):
                self._run_exit(k, queue.take(self._call_size(queue.size)))

    def _call_size(self, waiting):
        """How many of the ``waiting`` images the next call takes: a full batch if there is one;
        else all of them when padding them up to a bucket adds at most a quarter of padding rows,
        or else the largest bucket that they fill (no padding; the rest follows)."""
        if waiting >= self.batch_size:
            return self.batch_size
        bucket = self.engine.bucket(waiting)
        if bucket - waiting <= bucket // 4:
            return waiting
        return max(b for b in self.engine.buckets if b <= waiting)

    def _run_exit(self, k, chunks):
        ms, engine = self.engine._ms, self.engine
        positions = np.concatenate([chunk[0] for chunk in chunks]) if len(chunks) > 1 else chunks[0][0]
        images = np.concatenate([chunk[1] for chunk in chunks]) if len(chunks) > 1 else chunks[0][1]
        count = len(positions)
        bucket = engine.bucket(count)
        reused = _reuse_inputs(chunks, bucket, ms, self._ops)
        outputs = engine.call_exit(k, ms.Tensor(_pad_rows(images, bucket)), reused)
        probs = softmax(outputs[0].asnumpy()[:count])      # the padding rows are dropped
        confidence = probs.max(axis=1)
        thresholds = self.thresholds if self.policy is None else self.policy.thresholds_for_next_call()
        done = accepts(confidence, thresholds[k], is_last=k == engine.num_exits - 1)
        if self.policy is not None:
            done = self.policy.exit_ran(k, positions, confidence, done)
        self._answers.append((positions[done], k, *top_classes(probs[done], self.top_k_count)))
        self.answered += int(done.sum())
        if not done.all():
            rows = np.flatnonzero(~done)
            self.queues[k + 1].add(positions[rows], images[rows], tuple(outputs[1:]), rows)

    def results(self):
        """(exit index, class, confidence) arrays over the pushed images, in push order."""
        self._check_finished()
        return self.answered_results()[1:]

    def top_k(self):
        """(classes, scores) arrays (N, top_k) over the pushed images in push order: the best
        classes at the answering exit, best first."""
        self._check_finished()
        return self.answered_top_k()

    def answered_results(self):
        """(positions, exit index, class, confidence) arrays of the images answered so far, in push
        order: all of them after ``finish()``, what an interrupted run can still report before it."""
        positions, exit_index, classes, scores = self._answered()
        return positions, exit_index, classes[:, 0], scores[:, 0]

    def answered_top_k(self):
        """(classes, scores) (n, top_k) of the images answered so far, in the order of ``answered_results``."""
        return self._answered()[2:]

    def _check_finished(self):
        if self.answered < self.pushed:
            raise RuntimeError(f"{self.pushed - self.answered} images are still queued: call finish() first")

    def _answered(self):
        count = min(self.top_k_count, self.engine.manifest["num_classes"])
        if not self._answers:
            return (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, count), np.int64),
                    np.zeros((0, count), np.float32))
        positions = np.concatenate([answer[0] for answer in self._answers])
        exit_index = np.concatenate([np.full(len(answer[0]), answer[1], np.int64) for answer in self._answers])
        classes = np.concatenate([answer[2] for answer in self._answers]).astype(np.int64)
        scores = np.concatenate([answer[3] for answer in self._answers]).astype(np.float32)
        order = np.argsort(positions, kind="stable")
        return positions[order], exit_index[order], classes[order], scores[order]
