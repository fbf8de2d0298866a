"""The early-exit engine: the exported exits as GraphCells, run with real early exit."""
import os

import numpy as np

# The exit rule is the calibration's (numpy only), so the engine and calibration agree exactly.
from ..calibrate.search import NEVER, softmax
from .manifest import load_manifest

__all__ = ["bucket_sizes", "EarlyExitEngine"]


def bucket_sizes(max_batch):
    """Batch sizes the exits run at: powers of two up to ``max_batch``, and ``max_batch`` itself."""
    sizes, size = [], 1
    while size < max_batch:
        sizes.append(size)
        size *= 2
    return sizes + [max_batch]


class EarlyExitEngine:
    """The exported exits as GraphCells, run with real early exit.

    Batches are padded up to the next bucket size (a power of two) at every exit:
    each new input shape costs MindSpore a kernel resize (~0.2 s on CPU), so a handful of fixed
    shapes, compiled once by ``warm_up``, beats a different shape at every call."""

    def __init__(self, model_dir, manifest=None, max_batch=32):
        import mindspore as ms
        from mindspore import nn
        self._ms = ms
        self.manifest = manifest or load_manifest(model_dir)
        self.exits = [nn.GraphCell(ms.load(os.path.join(model_dir, info["file"])))
                      for info in self.manifest["exits"]]
        self.cumulative_gflops = [info["cumulative_gflops"] for info in self.manifest["exits"]]
        self.buckets = bucket_sizes(max_batch)

    @property
    def num_exits(self):
        return len(self.exits)

    def warm_up(self):
        """Run every exit once at every bucket size, so that timing excludes compilation."""
        size = self.manifest["preprocess"]["img_size"]
        images = np.zeros((self.buckets[-1], 3, size, size), np.float32)
        for bucket in self.buckets:
            self.classify(images[:bucket], [float(NEVER)] * self.num_exits)

    def _bucket(self, count):
        return next((b for b in self.buckets if b >= count), count)

    def classify(self, images, exit_thresholds):
        """(exit index, class, confidence) per image of ``images`` (B, 3, H, W) float32."""
        ms = self._ms
        count = images.shape[0]
        exit_index = np.full(count, -1, np.int64)
        predictions = np.zeros(count, np.int64)
        confidences = np.zeros(count, np.float32)
        remaining = np.arange(count)            # original index of each real row of the batch
        padding = self._bucket(count) - count
        batch = ms.Tensor(np.concatenate([images, np.repeat(images[-1:], padding, axis=0)]) if padding else images)
        reused = ()
        for k, graph in enumerate(self.exits):
            outputs = graph(batch, *reused)
            probs = softmax(outputs[0].asnumpy()[:len(remaining)])   # drop the padding rows
            confidence = probs.max(axis=1)
            last = k == self.num_exits - 1
            done = np.ones(len(remaining), bool) if last else confidence >= np.float32(exit_thresholds[k])
            answered = remaining[done]
            exit_index[answered] = k
            predictions[answered] = probs[done].argmax(axis=1)
            confidences[answered] = confidence[done]
            if last or done.all():
                break
            rows = np.flatnonzero(~done)
            remaining = remaining[rows]
            padded = np.concatenate([rows, np.full(self._bucket(len(rows)) - len(rows), rows[-1])])
            keep = ms.Tensor(padded.astype(np.int32))
            batch = batch[keep]
            reused = tuple(tensor[keep] for tensor in outputs[1:])
        return exit_index, predictions, confidences
