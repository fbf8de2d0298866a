"""Answers by a deadline when streaming (batch size 1): the deadline policy (numpy only).

Every image gets the answer of the deepest exit that finishes within ``deadline_ms`` of its push,
unless an earlier exit is confident enough (the calibrated thresholds still apply). After exit k
the policy asks: would exit k+1 end within the deadline? It forecasts exit k+1's time as a high
quantile (``quantile``, default the 99th percentile) of its times within the last ``history``
images of the stream, pooled with its warm-up times (``measure_exit_seconds``) while those are
fewer than ``MIN_RECENT``. So a slower machine or a busier
one moves the forecast with it, and a forecast raised by a few slow calls comes back down: an exit
the forecast keeps from running is not re-measured, but after ``history`` images its slow times
are forgotten, the warm-up's speak again, and it runs (and is measured) again. If exit k+1 would
not end in time, exit k answers: "by the deadline".

An exit's time here is what the image spends from the end of the previous exit's decision to the
end of this one's: the graph call, reading the logits back, the softmax and the bookkeeping. What
the forecast cannot see is what follows the last decision (handing the answer back) and the cases
where an exit takes longer than its 99th percentile, so p99 latency lands at the deadline plus a
small overhead, which the summary reports (``p99_over_deadline_ms``). Exit 1 always runs (an image
needs an answer): if it alone misses the deadline, that image is counted in ``first_exit_late``.
"""
import time
from collections import deque

import numpy as np

from ..contract.exit_rule import ALWAYS, NEVER
from ..errors import InferenceError

__all__ = ["DeadlinePolicy", "measure_exit_seconds", "format_deadline_summary"]

HISTORY = 256
MIN_RECENT = 20


class _ExitTimer:
    """A policy that changes nothing and notes how long each exit of a batch-1 stream took."""

    def __init__(self, thresholds, clock=time.perf_counter):
        self.thresholds = np.asarray(thresholds, np.float32)
        self.seconds = [[] for _ in self.thresholds]
        self._clock = clock
        self._last = None

    def thresholds_for_next_call(self):
        return self.thresholds

    def images_pushed(self, count):
        if count != 1:
            raise InferenceError(f"the deadline mode streams one image at a time; {count} were pushed at once "
                                 "(use --batch_size 1)")
        self._last = self._clock()

    def exit_ran(self, k, positions, confidence, answered):
        now = self._clock()
        self.seconds[k].append(now - self._last)
        self._last = now
        return answered


def measure_exit_seconds(engine, repeats=100, burn_in=10, seconds=2.0, clock=time.perf_counter):
    """Each exit's time per image at batch size 1 on this machine (lists, one per exit): zero images
    through every exit of a real ``EarlyExitRun`` (no exit answers before the last), after
    ``burn_in`` images whose times are dropped (the first calls after compiling are the slowest:
    memory is being allocated). At least ``repeats`` images, and more while ``seconds`` have not
    passed, up to the forecast's ``HISTORY``: with 100 the 99th percentile is the slowest call,
    with 256 the third slowest, so one stray slow call does not make an exit look slow (and keep
    it from running until the policy forgets it, ``history`` images later)."""
    timer = _ExitTimer([NEVER] * (engine.num_exits - 1) + [ALWAYS], clock)
    run = engine.run(timer.thresholds, 1, policy=timer)
    image = np.zeros((1,) + engine.image_shape, np.float32)
    for _ in range(burn_in):
        run.push(image)
    begin, measured = clock(), 0
    while measured < repeats or (measured < HISTORY and clock() - begin < seconds):
        run.push(image)
        measured += 1
    return [times[burn_in:] for times in timer.seconds]


class DeadlinePolicy(_ExitTimer):
    """The deadline policy (see the module docstring). ``exit_seconds``: each exit's warm-up times
    (``measure_exit_seconds``)."""

    def __init__(self, deadline_ms, thresholds, exit_seconds, quantile=0.99, history=HISTORY,
                 clock=time.perf_counter):
        super().__init__(thresholds, clock)
        if not deadline_ms > 0:
            raise InferenceError(f"--deadline_ms must be positive, got {deadline_ms}")
        if len(exit_seconds) != len(self.thresholds) or not all(len(s) for s in exit_seconds):
            raise InferenceError("the deadline needs warm-up times of every exit")
        self.deadline = deadline_ms / 1000.0
        self.quantile = quantile
        self.history = history
        self.warm_up_seconds = [np.asarray(s[-history:], np.float64) for s in exit_seconds]
        self.warm_up_ms = [1000.0 * float(np.median(s)) for s in exit_seconds]
        self.seconds = [deque(maxlen=history) for _ in exit_seconds]
        self._ran_on = [deque(maxlen=history) for _ in exit_seconds]    # the image of each time
        self._images = 0
        self._start = None
        self._by = {"confidence": 0, "last_exit": 0, "deadline": 0}
        self._exits = []
        self._latencies = []            # seconds from push to the last decision, per image
        self._first_exit_late = 0

    def forecast(self, k):
        """Seconds exit ``k`` is expected to take at most: the ``quantile`` of its times within the
        last ``history`` images, pooled with its warm-up times while they are few."""
        ran_on, times = np.asarray(self._ran_on[k]), np.asarray(self.seconds[k], np.float64)
        recent = times[ran_on > self._images - 1 - self.history]
        if len(recent) < MIN_RECENT:
            recent = np.concatenate([recent, self.warm_up_seconds[k]])
        return float(np.quantile(recent, self.quantile, method="higher"))

    def images_pushed(self, count):
        super().images_pushed(count)
        self._images += 1
        self._start = self._last

    def exit_ran(self, k, positions, confidence, answered):
        super().exit_ran(k, positions, confidence, answered)
        self._ran_on[k].append(self._images - 1)
        elapsed = self._last - self._start
        last = k == len(self.thresholds) - 1
        if bool(answered[0]):
            self._finish("last_exit" if last else "confidence", k, elapsed)
            return answered
        if elapsed + self.forecast(k + 1) > self.deadline:
            self._finish("deadline", k, elapsed)
            return np.ones_like(answered)
        return answered

    def _finish(self, by, k, elapsed):
        self._by[by] += 1
        self._exits.append(k)
        self._latencies.append(elapsed)
        if k == 0 and elapsed > self.deadline:
            self._first_exit_late += 1

    def summary(self, correct=None, latencies_ms=None):
        """Shares answered by confidence, at the last exit and by the deadline, and latency
        percentiles: of ``latencies_ms`` (the caller's own per-image clock) when given, else of the
        policy's (push to the last decision)."""
        count = max(1, len(self._exits))
        measured = np.asarray(latencies_ms if latencies_ms is not None else 1000.0 * np.asarray(self._latencies))
        p50, p95, p99 = np.percentile(measured, [50, 95, 99]) if measured.size else (np.nan,) * 3
        deadline_ms = 1000.0 * self.deadline
        return {"mode": "deadline", "deadline_ms": deadline_ms,
                "answered_by_confidence": self._by["confidence"] / count,
                "answered_at_last_exit": self._by["last_exit"] / count,
                "answered_by_deadline": self._by["deadline"] / count,
                "exit_shares": (np.bincount(self._exits, minlength=len(self.thresholds)) / count).tolist(),
                "latency_ms": {"p50": float(p50), "p95": float(p95), "p99": float(p99)},
                "p99_over_deadline_ms": float(p99 - deadline_ms),
                "over_deadline_share": float(np.mean(measured > deadline_ms)) if measured.size else 0.0,
                "first_exit_late": self._first_exit_late,
                "forecast_quantile": self.quantile, "exit_ms_warm_up_median": self.warm_up_ms,
                "exit_ms_forecast_at_end": [1000.0 * self.forecast(k) for k in range(len(self.thresholds))]}


def format_deadline_summary(summary):
    latency = summary["latency_ms"]
    lines = [f"deadline {summary['deadline_ms']:.2f} ms: {100 * summary['answered_by_confidence']:.1f}% answered "
             f"early by confidence, {100 * summary['answered_by_deadline']:.1f}% by the deadline, "
             f"{100 * summary['answered_at_last_exit']:.1f}% at the last exit",
             f"  latency p50 {latency['p50']:.2f} ms, p95 {latency['p95']:.2f} ms, p99 {latency['p99']:.2f} ms "
             f"(p99 - deadline: {summary['p99_over_deadline_ms']:+.2f} ms; "
             f"{100 * summary['over_deadline_share']:.1f}% of images over the deadline)",
             f"  exit time forecasts (ms, {100 * summary['forecast_quantile']:g}th percentile of recent times): "
             + ", ".join(f"{ms:.2f}" for ms in summary["exit_ms_forecast_at_end"])]
    if summary["first_exit_late"]:
        lines.append(f"  {summary['first_exit_late']} image(s) missed the deadline at exit 1 already")
    return lines
