"""Holding a compute budget while the inputs drift: the budget controller (numpy only).

Calibrated thresholds promise a cost per image on images like the calibration set. When the inputs
get harder (night images, a new camera), more images fall through to the late exits and the cost
climbs above the budget. ``BudgetController`` moves along the calibrated budget table (rows of
per-exit thresholds, sorted here by calibration cost) so that the mean cost per image over the
recent ``window`` images stays within ``tolerance`` of the target, and never leaves the table.

**What it sees.** The engine reports every exit call: each image's confidence at every exit it ran.
That says where the image would have exited under any other row of the table:

* if some exit it ran is confident enough under row r (the first k with conf_k >= T^r_k), row r
  would have answered it there: its cost under r is known exactly;
* otherwise row r would have sent it further than it went, where nothing was observed. Its cost is
  then estimated from the window's images that did run those later exits: the share of them
  confident enough under r at exit j is its chance to stop at j. Those images went further than
  it under the thresholds in force, so they are harder, and the estimate errs on the dear side.

So the cost of every row on the recent window is predicted; the current row's is the observed cost
of the images it answered. The window is the last ``window`` images that ran exit 1, in push order;
those still on their way to a later exit count as censored (with batches, the images that go on
are answered after those pushed behind them: a window of the last answered would look cheap, and
waiting for their answers would move late).

**When it moves**: once a full window has run, every ``window // 8`` images (before a push), when
the current row's cost on the window is off the target by more than ``deadband`` (half the
tolerance) *and* by more than ``z`` standard errors of the window's mean (exit costs differ
many-fold, so a window's mean is noisy, and with no drift the controller must stay put). It then
takes the row predicted nearest the target, or half the tolerance past it when its previous move
went the same way (drift keeps pushing). Moving back the way it came takes an error beyond the
tolerance (hysteresis), and it waits ``window // 4`` images after a move. There is no integrator to
wind up: right after a move the new row's prediction is near the target, so nothing pulls it back.

**The target** is the calibration cost of the row ``--budget G`` picks (``start_row``): with no
drift the controller stays on that row, and it holds the cost the operator runs at today (at most
G). The selection rule is the contract's (``select_row``, one call in ``from_document``).

The engine talks to a policy through three calls (``EarlyExitRun``): ``thresholds_for_next_call()``
before an exit runs, ``images_pushed(count)`` when images arrive and ``exit_ran(k, positions,
confidence, answered)`` after exit k ran, which returns which of the images are answered.
"""
import logging
import time

import numpy as np

from ..errors import InferenceError
from ..contract.thresholds import select_row

__all__ = ["DEFAULT_WINDOW", "BudgetController", "predicted_row_costs", "format_budget_summary"]

LOGGER = logging.getLogger(__name__)

#: Images per window. A window's mean cost is noisy: its standard error is the per-image cost's
#: coefficient of variation (about 1 when exit costs differ many-fold, as in DVT) over sqrt(window),
#: and holding +/-5 % takes z * that below 5 %: (2 * 1 / 0.05)^2 = 1600 images at least; 4096 leaves
#: room for the lag behind a drift.
DEFAULT_WINDOW = 4096


def predicted_row_costs(confidences, row_thresholds, exit_gflops):
    """Predicted cost per image (GFLOPs) of every row on images seen with early exit.

    ``confidences`` (N, K): each image's confidence at each exit it ran, NaN at the exits it did not
    reach (an image answered at exit e has e + 1 numbers). ``row_thresholds`` (R, K). Returns (R, N):
    exact where a row answers the image at an exit it ran; where the row would send it further,
    the expected cost under the stopping shares of the images that ran those exits (a later exit
    that no image ran is taken as passed through; the last exit always answers)."""
    conf = np.asarray(confidences, np.float32)
    thresholds = np.asarray(row_thresholds, np.float32)
    costs = np.asarray(exit_gflops, np.float64)
    num_exits = conf.shape[1]
    ran = ~np.isnan(conf)
    deepest = ran.sum(axis=1) - 1                                   # the exit each image answered at
    with np.errstate(invalid="ignore"):
        stops = conf[None] >= thresholds[:, None, :]                # (R, N, K); NaN never stops
    stops[:, :, -1] |= ran[None, :, -1]                             # the last exit answers everybody
    stopped = stops.any(axis=2)
    first = stops.argmax(axis=2)
    # chance that row r stops an image at exit j, among the images that ran exit j
    reached = ran.sum(axis=0)
    stop_share = np.where(reached > 0, stops.sum(axis=1) / np.maximum(reached, 1), 0.0)    # (R, K)
    stop_share[:, -1] = 1.0
    beyond = _expected_cost_from(stop_share, costs)                 # (R, K): cost when entering exit j
    censored_cost = beyond[:, np.minimum(deepest + 1, num_exits - 1)]
    return np.where(stopped, costs[first], censored_cost)


def _expected_cost_from(stop_share, costs):
    """(R, K): the expected cost of an image entering exit j, stopping at each exit with its share."""
    expected = np.empty_like(stop_share)
    expected[:, -1] = costs[-1]
    for j in range(stop_share.shape[1] - 2, -1, -1):
        expected[:, j] = stop_share[:, j] * costs[j] + (1.0 - stop_share[:, j]) * expected[:, j + 1]
    return expected


class _Window:
    """The last ``size`` images that ran exit 1, in push order: their confidence at every exit
    they ran so far (NaN elsewhere) and, once answered, their cost (NaN while on their way)."""

    def __init__(self, size, num_exits):
        self.confidences = np.full((size, num_exits), np.nan, np.float32)
        self.costs = np.full(size, np.nan)
        self.count = 0          # images that ran exit 1 (exit 1 takes them in push order)

    def note(self, k, positions, confidence, answered, cost):
        size = len(self.costs)
        if k == 0:
            self.confidences[positions % size] = np.nan
            self.costs[positions % size] = np.nan
            self.count = int(positions[-1]) + 1
        inside = positions >= self.count - size       # those that left the window are forgotten
        self.confidences[positions[inside] % size, k] = confidence[inside]
        self.costs[positions[inside & answered] % size] = cost

    def current(self):
        filled = min(self.count, len(self.costs))
        return self.confidences[:filled], self.costs[:filled]


class BudgetController:
    """Moves along a calibrated budget table so the mean cost per image holds a target (see the
    module docstring). ``rows``: the table's rows (``exit_thresholds``, ``calibration_gflops``,
    ``calibration_accuracy``, optionally ``budget_index``), any order; ``exit_gflops``: the cost of
    answering at each exit (cumulative GFLOPs); ``start_thresholds``: the row to start on (and whose
    calibration cost is the target)."""

    def __init__(self, rows, exit_gflops, start_thresholds, window=DEFAULT_WINDOW, tolerance=0.05, deadband=None,
                 z=2.0, budget_gflops=None, clock=time.perf_counter):
        if window < 8:
            raise InferenceError(f"the budget window must hold at least 8 images, got {window}")
        if not 0 < tolerance < 1:
            raise InferenceError(f"the budget tolerance is a fraction in (0, 1), got {tolerance}")
        order = sorted(range(len(rows)), key=lambda i: rows[i]["calibration_gflops"])
        self.rows = [rows[i] for i in order]
        self.row_thresholds = np.array([row["exit_thresholds"] for row in self.rows], np.float32)
        self.exit_gflops = np.asarray(exit_gflops, np.float64)
        start = np.flatnonzero((self.row_thresholds == np.float32(start_thresholds)).all(axis=1))
        if not start.size:
            raise InferenceError("the start thresholds are not a row of the budget table")
        self.start_row = self.row = int(start[0])
        self.target = float(self.rows[self.row]["calibration_gflops"])
        self.budget = budget_gflops
        self.window_size = window
        self.tolerance = tolerance
        self.deadband = tolerance / 2 if deadband is None else deadband
        self.z = z
        self.check_every = max(1, window // 8)
        self.dwell = max(1, window // 4)
        self.switches = []
        self._window = _Window(window, len(self.exit_gflops))
        self._answered = []         # (positions, exit, row) per exit call
        self._last_check = 0
        self._last_switch = 0
        self._direction = 0         # the sign of the cost error the last move corrected
        self._pinned = 0            # decisions that wanted a row beyond the table's ends
        self._noise = None          # the window mean's standard error / target, at the last decision
        self._clock = clock
        self._began = None          # when the first images arrived

    @classmethod
    def from_document(cls, document, exit_gflops, budget_gflops, source, **options):
        """The controller for ``--hold_budget G``: starts on the row ``--budget G`` picks."""
        rows = document.get("budgets") or []
        start = select_row(rows, budget_gflops, source=source)["exit_thresholds"]
        return cls(rows, exit_gflops, start, budget_gflops=budget_gflops, **options)

    # -- the engine's calls ---------------------------------------------------------------------

    def thresholds_for_next_call(self):
        return self.row_thresholds[self.row]

    def images_pushed(self, count):
        """Images arrive: time to decide, before they run, if enough went in since the last look."""
        if self._began is None:
            self._began = self._clock()
        if self._window.count - self._last_check >= self.check_every:
            self._decide()

    def exit_ran(self, k, positions, confidence, answered):
        """Exit ``k`` ran on the images at ``positions``: note their confidences (and which were
        answered, for the report). Changes no answer."""
        self._window.note(k, np.asarray(positions), np.asarray(confidence, np.float32), np.asarray(answered),
                          self.exit_gflops[k])
        if answered.any():
            self._answered.append((positions[answered], k, self.row))
        return answered

    # -- the decision ---------------------------------------------------------------------------

    def _decide(self):
        window = self._window
        self._last_check = window.count
        if window.count < self.window_size or window.count - self._last_switch < self.dwell:
            return
        confidences, costs = window.current()
        predicted = predicted_row_costs(confidences, self.row_thresholds, self.exit_gflops)
        mean = predicted.mean(axis=1)
        current = predicted[self.row]
        error = mean[self.row] - self.target
        direction = int(np.sign(error))
        # hysteresis: undoing the last move takes an error beyond the tolerance, not the deadband
        band = self.tolerance if direction == -self._direction else self.deadband
        self._noise = current.std() / np.sqrt(len(current)) / self.target
        noise = self.z * self._noise * self.target
        if abs(error) <= max(band * self.target, noise):
            return
        # a second move the same way is drift, which keeps pushing: aim half the tolerance past
        # the target; a first move, or one back, aims at the target itself
        aim = self.target * (1.0 - direction * self.tolerance / 2) if direction == self._direction else self.target
        self._direction = direction
        accuracy = np.array([row["calibration_accuracy"] for row in self.rows])
        best = int(np.lexsort((-accuracy, np.abs(mean - aim)))[0])
        if best == self.row:
            self._pinned += 1       # the table's end: nothing nearer the target exists
            return
        # what the window cost: the answered images' exits, the current row's estimate for the rest
        observed = float(np.where(np.isnan(costs), current, costs).mean())
        self.switches.append({
            "image": int(window.count), "seconds": round(self._clock() - self._began, 3),
            "from_row": self._describe(self.row), "to_row": self._describe(best),
            "observed_gflops": observed, "predicted_gflops": float(mean[best]),
            "target_gflops": self.target})
        LOGGER.info("budget: after %d images, window cost %.4g GFLOPs vs target %.4g: row %d -> %d",
                    window.count, observed, self.target, self.row, best)
        self.row = best
        self._last_switch = window.count

    def _describe(self, row):
        info = self.rows[row]
        described = {"row": row, "calibration_gflops": float(info["calibration_gflops"]),
                     "calibration_accuracy": float(info["calibration_accuracy"])}
        if "budget_index" in info:
            described["budget_index"] = info["budget_index"]
        return described

    # -- the report -----------------------------------------------------------------------------

    def answers(self):
        """(positions, exits, costs, rows) of every answered image, in push order."""
        if not self._answered:
            return (np.zeros(0, np.int64),) * 2 + (np.zeros(0),) + (np.zeros(0, np.int64),)
        positions = np.concatenate([p for p, _, _ in self._answered])
        exits = np.concatenate([np.full(len(p), k) for p, k, _ in self._answered])
        rows = np.concatenate([np.full(len(p), r) for p, _, r in self._answered])
        order = np.argsort(positions, kind="stable")
        return positions[order], exits[order], self.exit_gflops[exits[order]], rows[order]

    def windows(self, correct=None):
        """Consecutive windows of ``window`` images in push order: cost, its error against the
        target, the row answering most of them, and the accuracy when ``correct`` (by position) is
        given; a last, shorter window is reported as such."""
        positions, _, costs, rows = self.answers()
        report = []
        for start in range(0, len(costs), self.window_size):
            part = slice(start, start + self.window_size)
            row = int(np.bincount(rows[part]).argmax())
            cost = float(costs[part].mean())
            entry = {"first_image": start, "images": int(len(costs[part])), "gflops": cost,
                     "error": cost / self.target - 1.0, "row": row,
                     "row_calibration_accuracy": float(self.rows[row]["calibration_accuracy"])}
            if correct is not None:
                entry["accuracy"] = 100.0 * float(np.mean(np.asarray(correct)[positions[part]]))
            report.append(entry)
        return report

    def summary(self, correct=None, latencies_ms=None):
        """The report for the inference summary; ``correct`` (by position) adds accuracy per window."""
        windows = self.windows(correct)
        full = [w for w in windows if w["images"] == self.window_size]
        return {"mode": "hold_budget", "budget_gflops": self.budget, "target_gflops": self.target,
                "tolerance": self.tolerance, "window": self.window_size,
                "table_rows": len(self.rows), "start_row": self._describe(self.start_row),
                "final_row": self._describe(self.row), "switches": self.switches,
                "decisions_at_table_end": self._pinned, "window_noise": self._noise,
                "windows_within_tolerance": sum(abs(w["error"]) <= self.tolerance for w in full),
                "full_windows": len(full), "windows": windows}


def format_budget_summary(summary):
    """Summary lines of a ``BudgetController.summary()``."""
    lines = [f"budget held: target {summary['target_gflops']:.4g} GFLOPs per image (the row --budget "
             f"{summary['budget_gflops']} picks) +/-{100 * summary['tolerance']:.0f}% over windows of "
             f"{summary['window']} images: {summary['windows_within_tolerance']}/{summary['full_windows']} "
             f"full windows within it; {len(summary['switches'])} switch(es)"]
    if summary["window_noise"] is not None:
        lines.append(f"  a window's mean cost is noisy: +/-{100 * summary['window_noise']:.1f}% (one standard error); "
                     "it should be well below the tolerance (--window)")
    for switch in summary["switches"]:
        lines.append(f"  after image {switch['image']} ({switch['seconds']:.1f} s into the stream): row {switch['from_row']['row']} -> "
                     f"{switch['to_row']['row']} (window cost {switch['observed_gflops']:.4g} vs target "
                     f"{switch['target_gflops']:.4g}; new row predicted {switch['predicted_gflops']:.4g})")
    if summary["decisions_at_table_end"]:
        lines.append(f"  {summary['decisions_at_table_end']} decision(s) found no row nearer the target: "
                     "the drift is beyond the table's range")
    for window in summary["windows"]:
        accuracy = f", accuracy {window['accuracy']:.2f}%" if "accuracy" in window else ""
        lines.append(f"  images {window['first_image']}-{window['first_image'] + window['images'] - 1}: "
                     f"{window['gflops']:.4g} GFLOPs ({100 * window['error']:+.1f}%), row {window['row']}{accuracy}")
    return lines
