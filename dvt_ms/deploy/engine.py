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
import os
import sys
import tempfile

import numpy as np

from ..contract.exit_rule import accepts, softmax, top_classes
from ..contract.manifest import load_manifest
from ..errors import ManifestError

__all__ = ["bucket_sizes", "EarlyExitEngine", "EarlyExitRun"]


def bucket_sizes(max_batch):
    """Batch sizes the exits run at: powers of two up to ``max_batch``, and ``max_batch`` itself."""
    sizes, size = [], 1
    while size < max_batch:
        sizes.append(size)
        size *= 2
    return sizes + [max_batch]


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
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


class EarlyExitEngine:
    """The exported exits of ``model_dir`` as GraphCells.

    The exits run at the bucket sizes (``bucket_sizes(max_batch)``) only, smaller batches padded
    up to one: each new input shape costs MindSpore a recompilation (~0.2 s on CPU, seconds for
    large models), so a handful of shapes, compiled once by ``warm_up``, beats a new shape at
    almost every call."""

    def __init__(self, model_dir, manifest=None, max_batch=32):
        import mindspore as ms
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self._ms = ms
        self.manifest = manifest or load_manifest(model_dir)
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

    def run(self, exit_thresholds, batch_size=None, top_k=1):
        """A new ``EarlyExitRun`` with these thresholds (one per exit; the last is ignored)."""
        return EarlyExitRun(self, exit_thresholds, batch_size or self.max_batch, top_k)

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
    """Images waiting in front of one exit: their positions, pixels (host) and reuse tensors (device)."""

    def __init__(self):
        self.chunks = []
        self.size = 0

    def add(self, positions, images, reused):
        self.chunks.append((positions, images, reused))
        self.size += len(positions)

    def take(self, count, ops):
        """The first ``count`` waiting images as (positions, images, reuse tensors)."""
        taken, size = [], 0
        while size < count:
            positions, images, reused = self.chunks.pop(0)
            need = count - size
            if len(positions) > need:   # split the chunk: the rest stays first in line
                self.chunks.insert(0, (positions[need:], images[need:], tuple(t[need:] for t in reused)))
                positions, images, reused = positions[:need], images[:need], tuple(t[:need] for t in reused)
            taken.append((positions, images, reused))
            size += len(positions)
        self.size -= count
        if len(taken) == 1:
            return taken[0]
        reused = tuple(ops.concat(parts, axis=0) for parts in zip(*(chunk[2] for chunk in taken)))
        return (np.concatenate([chunk[0] for chunk in taken]), np.concatenate([chunk[1] for chunk in taken]),
                reused)


class EarlyExitRun:
    """Early-exit classification of a stream of images (see the module docstring).

    ``push(images)`` queues images (B, 3, S, S) and runs every exit that has a full batch;
    ``finish()`` runs the rest; ``results()`` gives (exit index, class, confidence) per image in
    push order, and ``top_k()`` the ``top_k`` best classes and their scores at the answering exit.
    ``answered`` counts the images classified so far (all of them after a push when the batch
    size is 1)."""

    def __init__(self, engine, exit_thresholds, batch_size, top_k=1):
        from mindspore import ops
        if len(exit_thresholds) != engine.num_exits:
            raise ValueError(f"{len(exit_thresholds)} thresholds for {engine.num_exits} exits")
        if batch_size not in engine.buckets:
            raise ValueError(f"batch size {batch_size} is not one of the engine's compiled sizes {engine.buckets}")
        self.engine = engine
        self.batch_size = batch_size
        self.thresholds = np.asarray(exit_thresholds, np.float32)
        self.top_k_count = max(1, int(top_k))
        self.queues = [_Queue() for _ in range(engine.num_exits)]
        self.pushed = 0
        self.answered = 0
        self._answers = []      # (positions, exit index, top classes, their scores) per exit call
        self._ops = ops

    def push(self, images):
        images = np.asarray(images, np.float32)
        if len(images):
            self.queues[0].add(np.arange(self.pushed, self.pushed + len(images)), images, ())
            self.pushed += len(images)
        self._drain(full_batches_only=True)

    def finish(self):
        self._drain(full_batches_only=False)

    def _drain(self, full_batches_only):
        for k, queue in enumerate(self.queues):
            while queue.size >= self.batch_size or (queue.size and not full_batches_only):
                self._run_exit(k, *queue.take(self._call_size(queue.size), self._ops))

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

    def _run_exit(self, k, positions, images, reused):
        ms, engine = self.engine._ms, self.engine
        count = len(positions)
        bucket = engine.bucket(count)
        if bucket > count:
            pad = ms.Tensor(np.minimum(np.arange(bucket), count - 1).astype(np.int32))
            reused = tuple(tensor[pad] for tensor in reused)
        outputs = engine.call_exit(k, ms.Tensor(_pad_rows(images, bucket)), reused)
        probs = softmax(outputs[0].asnumpy()[:count])      # the padding rows are dropped
        done = accepts(probs.max(axis=1), self.thresholds[k], is_last=k == engine.num_exits - 1)
        self._answers.append((positions[done], k, *top_classes(probs[done], self.top_k_count)))
        self.answered += int(done.sum())
        if not done.all():
            rows = np.flatnonzero(~done)
            keep = ms.Tensor(rows.astype(np.int32))
            self.queues[k + 1].add(positions[rows], images[rows], tuple(tensor[keep] for tensor in outputs[1:]))

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
