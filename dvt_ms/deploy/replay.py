"""The early-exit engine on recorded scores: each exit's graph replaced by a look-up of its logits.

Early exit decides from each exit's logits only (softmax, confidence, threshold), so a stream whose
logits at every exit were computed once (``EarlyExitEngine.every_exit``) can be replayed through the
real ``EarlyExitRun`` (queues, batches, a policy) as often as wanted, without running the model:
what a policy would have done on yesterday's traffic, or a benchmark of policies on a long stream.
Costs are the manifest's GFLOPs; wall time is not modelled, unless ``exit_seconds`` and a
``ManualClock`` script it (the tests of the deadline policy do).

An image is pushed as its index in the recorded stream: ``run.push(replay_images(indices))``.
"""
import numpy as np

from .engine import EarlyExitRun, bucket_sizes

__all__ = ["ReplayEngine", "ManualClock", "replay_images"]


def replay_images(indices):
    """The 'images' a ``ReplayEngine`` takes: each recorded image's index, (B, 1) float32 (exact
    below 2**24 images)."""
    return np.asarray(indices, np.float32).reshape(-1, 1)


class ManualClock:
    """A clock that moves only when told: ``clock()`` reads it, ``advance(seconds)`` moves it."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def advance(self, seconds):
        self.now += seconds


class ReplayEngine:
    """What ``EarlyExitRun`` needs of an engine, answering from ``logits`` (K, N, C), the recorded
    logits of every exit for N images. ``exit_gflops``: the cumulative cost of each exit.
    ``exit_seconds`` (a function of (exit, image index) -> seconds) advances ``clock`` (a
    ``ManualClock``) on every call, by the slowest image of the batch."""

    def __init__(self, logits, exit_gflops, max_batch=32, exit_seconds=None, clock=None):
        import mindspore as ms
        self._ms = ms
        self.logits = np.asarray(logits, np.float32)
        self.cumulative_gflops = list(exit_gflops)
        self.max_batch = max_batch
        self.buckets = bucket_sizes(max_batch)
        self.image_shape = (1,)
        self.manifest = {"num_classes": self.logits.shape[2]}     # what EarlyExitRun reads of a manifest
        self.exit_seconds = exit_seconds
        self.clock = clock
        if len(self.cumulative_gflops) != self.num_exits:
            raise ValueError(f"{len(self.cumulative_gflops)} exit costs for {self.num_exits} exits")

    @property
    def num_exits(self):
        return self.logits.shape[0]

    def bucket(self, count):
        return next(b for b in self.buckets if b >= count)

    def call_exit(self, k, images, reused):
        indices = images.asnumpy()[:, 0].astype(np.int64)
        if self.exit_seconds is not None:
            self.clock.advance(max(self.exit_seconds(k, index) for index in indices))
        outputs = (self._ms.Tensor(self.logits[k, indices]),)
        # what the next exit 'reuses': the indices again, gathered like real reuse tensors
        return outputs + ((images,) if k + 1 < self.num_exits else ())

    def run(self, exit_thresholds, batch_size=None, policy=None):
        return EarlyExitRun(self, exit_thresholds, batch_size or self.max_batch, policy=policy)
