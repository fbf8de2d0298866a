"""Budgeted batch classification for the DVT cascade (docs/thresholds.md), in plain numpy.

A K-exit cascade answers a sample at the first exit k whose confidence
``conf_k = max_c P[k, i, c]`` reaches that exit's threshold ``T_k``.  This
module finds such thresholds and scores them.  Everything here needs only each
exit's confidence and prediction (argmax), so every function takes either the
softmax scores P (K, N, C) or :class:`ExitScores` (two (K, N) arrays, reduced
batch by batch with :func:`exit_scores_from_logits`: memory independent of the
number of classes); both go through the same code.

* :func:`exit_fractions` and :func:`find_thresholds` reproduce the published
  threshold search bit for bit: budget index p = 1..59 (:data:`BUDGET_INDICES`)
  fixes a geometric exit distribution q, and the thresholds send
  ``floor(N * q_k)`` calibration samples out of exit k.
* :func:`assign_exits` / :func:`evaluate` give each sample's exit and
  prediction, the accuracy (%) and the expected cost per image;
  :func:`anytime_accuracy` and :func:`budget_curve` summarise a model.

The exit rule itself (float32 softmax, ``conf >= T``, the last exit answers the
rest) is the contract's (``dvt_ms.contract.exit_rule``), shared with the
deployment engine; choosing a row of the resulting table for a budget or an
accuracy target is the contract's too (``dvt_ms.contract.thresholds.select_row``).

Numerics follow the published (PyTorch, float32) code so that thresholds and
reported figures match it exactly: confidences, exit fractions and thresholds
are float32, and the expected cost is accumulated in float32.  This matters:
e.g. for K = 2, p = 55, N = 600 the float32 product ``N * q_0`` floors to 159
where exact arithmetic gives 160, so float64 would pick a different threshold.

numpy only: no mindspore import here.
"""
import numbers

import numpy as np

from ..contract.exit_rule import ALWAYS, NEVER, exit_indices, softmax

__all__ = [
    "BUDGET_INDICES", "ExitScores", "exit_scores", "exit_scores_from_logits", "concatenate_scores",
    "exit_fractions", "find_thresholds", "assign_exits", "evaluate",
    "anytime_accuracy", "budget_curve",
]

#: The 59 published budgets: index p gives the geometric ratio r = p / 20.
BUDGET_INDICES = range(1, 60)

_F32 = np.float32


# --------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------

class ExitScores:
    """Every exit's confidence (max softmax score, float32) and prediction (argmax), shape (K, N) each.

    ``num_classes`` (C, when known) lets targets be checked against the class count."""

    __slots__ = ("confidence", "prediction", "num_classes")

    def __init__(self, confidence, prediction, num_classes=None):
        self.confidence = confidence
        self.prediction = prediction
        self.num_classes = num_classes

    @property
    def shape(self):
        """(K, N, C) when the class count is known, else (K, N)."""
        return self.confidence.shape + ((self.num_classes,) if self.num_classes is not None else ())


def _check_probs(probs):
    """Return probs as float32 (K, N, C), or raise a ValueError saying why not."""
    arr = np.asarray(probs)
    if arr.ndim != 3 or min(arr.shape) == 0:
        raise ValueError(f"probs must have shape (exits K, samples N, classes C) with no empty "
                         f"axis, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"probs must be floating point softmax scores, got dtype {arr.dtype}")
    # The published search ran on float32 scores and stores float32 thresholds;
    # comparing in float32 keeps "conf >= T" true for the sample T came from.
    arr = arr.astype(_F32, copy=False)
    if not np.isfinite(arr).all() or arr.min() < 0 or arr.max() > 1:
        bad = arr[~(np.isfinite(arr) & (arr >= 0) & (arr <= 1))]
        raise ValueError(f"probs must be probabilities in [0, 1]; found {bad.size} value(s) "
                         f"outside it, e.g. {bad.flat[0]!r}")
    return arr


def exit_scores(probs):
    """:class:`ExitScores` of softmax scores ``probs`` (K, N, C): max and argmax over the classes.

    Class ties go to the lowest index, as torch.max and numpy.argmax do."""
    probs = _check_probs(probs)
    return ExitScores(probs.max(axis=2), probs.argmax(axis=2), probs.shape[2])


def exit_scores_from_logits(logits):
    """:class:`ExitScores` of one batch: ``logits`` is a sequence of K (B, C) arrays, one per exit.

    Each exit's softmax is taken in float32 (the exit rule's ``softmax``) and reduced at once, so nothing of
    size C outlives the batch; the result is bit-identical to :func:`exit_scores` of the stacked
    softmax scores."""
    confidence, prediction = [], []
    for exit_logits in logits:
        probs = softmax(exit_logits)
        if probs.ndim != 2:
            raise ValueError(f"each exit's logits must have shape (batch, classes), got {probs.shape}")
        confidence.append(probs.max(axis=1))
        prediction.append(probs.argmax(axis=1))
    return ExitScores(np.stack(confidence), np.stack(prediction), probs.shape[1])


def concatenate_scores(parts):
    """The :class:`ExitScores` of several batches (or subsets) one after the other."""
    parts = list(parts)
    if not parts:
        raise ValueError("no scores to concatenate")
    classes = {part.num_classes for part in parts}
    return ExitScores(np.concatenate([part.confidence for part in parts], axis=1),
                      np.concatenate([part.prediction for part in parts], axis=1),
                      classes.pop() if len(classes) == 1 else None)


def _as_scores(scores):
    """``scores`` (ExitScores, or softmax scores (K, N, C)) as checked ExitScores."""
    if not isinstance(scores, ExitScores):
        return exit_scores(scores)
    confidence, prediction = np.asarray(scores.confidence), np.asarray(scores.prediction)
    if confidence.ndim != 2 or min(confidence.shape) == 0 or prediction.shape != confidence.shape:
        raise ValueError(f"ExitScores need confidence and prediction of one shape (exits K, samples N) "
                         f"with no empty axis, got {confidence.shape} and {prediction.shape}")
    if not np.issubdtype(confidence.dtype, np.floating) or not np.issubdtype(prediction.dtype, np.integer):
        raise ValueError(f"ExitScores need float confidences and integer predictions, got "
                         f"{confidence.dtype} and {prediction.dtype}")
    confidence = confidence.astype(_F32, copy=False)
    if not np.isfinite(confidence).all() or confidence.min() < 0 or confidence.max() > 1:
        raise ValueError("ExitScores confidences must be probabilities in [0, 1]")
    return ExitScores(confidence, prediction, scores.num_classes)


def _check_targets(targets, scores):
    n = scores.confidence.shape[1]
    arr = np.asarray(targets)
    if arr.shape != (n,):
        raise ValueError(f"targets has shape {arr.shape} but the scores have shape {scores.shape}; "
                         f"expected ({n},)")
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"targets must be integer class labels, got dtype {arr.dtype}")
    c = scores.num_classes
    if arr.min() < 0 or (c is not None and arr.max() >= c):
        bound = f"[0, {c}) for {c} classes" if c is not None else "[0, classes)"
        raise ValueError(f"targets must lie in {bound}, got range [{arr.min()}, {arr.max()}]")
    return arr


def _check_per_exit(values, scores, name):
    """A real (K,) vector matching the scores' number of exits."""
    arr = np.asarray(values)
    k = scores.confidence.shape[0]
    if arr.shape != (k,):
        raise ValueError(f"{name} has shape {arr.shape} but the scores have shape {scores.shape} "
                         f"(K = {k} exits); expected ({k},)")
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise ValueError(f"{name} must be real numbers, got dtype {arr.dtype}")
    return arr


def _check_flops(flops, scores):
    arr = _check_per_exit(flops, scores, "flops").astype(np.float64)
    if not np.isfinite(arr).all() or (arr < 0).any():
        raise ValueError(f"flops must be finite and non-negative, got {arr.tolist()}")
    if (np.diff(arr) < 0).any():
        raise ValueError(f"flops must be the cumulative cost of exiting at each exit, so "
                         f"non-decreasing; got {arr.tolist()}")
    return arr


def _check_thresholds(thresholds, scores):
    # Stored thresholds are float32, like the published search's tensor.
    arr = _check_per_exit(thresholds, scores, "thresholds").astype(_F32)
    if np.isnan(arr).any():
        raise ValueError(f"thresholds must not be NaN, got {arr.tolist()}")
    return arr


def _check_fractions(fractions, scores):
    arr = _check_per_exit(fractions, scores, "exit_fractions").astype(_F32)
    if not np.isfinite(arr).all() or (arr < 0).any():
        raise ValueError(f"exit_fractions must be finite and non-negative, got {arr.tolist()}")
    return arr


# --------------------------------------------------------------------------
# the published search
# --------------------------------------------------------------------------

def _geometric_fractions(ratios, num_exits):
    """q_k ∝ r^(k+1) for each r in ``ratios``, in the published float32 arithmetic.

    The reference computes ``exp(log(r) * [1..K])`` on float32 tensors.  Its
    exp/log are (nearly) correctly rounded, numpy's float32 SIMD ones are not
    (they are often 1 ulp off), so we evaluate them in float64 and round.
    """
    r = np.asarray(ratios, dtype=np.float64).astype(_F32)
    log_r = np.log(r.astype(np.float64)).astype(_F32)
    powers = (log_r[:, None] * np.arange(1, num_exits + 1, dtype=_F32)).astype(_F32)
    weights = np.exp(powers.astype(np.float64)).astype(_F32)
    total = np.zeros(len(r), dtype=_F32)
    for k in range(num_exits):  # float32, left to right, like the reference's sum
        total = (total + weights[:, k]).astype(_F32)
    return (weights / total[:, None]).astype(_F32)


def exit_fractions(budget_index, num_exits):
    """The published exit distribution q (float32, shape (num_exits,)) for budget index p.

    r = p / 20 and q_k ∝ r^(k+1), k = 0..K-1: small p sends most samples out
    early (cheap), large p keeps them for the later exits.
    """
    if isinstance(budget_index, bool) or not isinstance(budget_index, numbers.Integral) \
            or budget_index < 1:
        raise ValueError(f"budget_index must be a positive integer (the published ones are "
                         f"{BUDGET_INDICES.start}..{BUDGET_INDICES.stop - 1}), "
                         f"got {budget_index!r}")
    if isinstance(num_exits, bool) or not isinstance(num_exits, numbers.Integral) \
            or num_exits < 1:
        raise ValueError(f"num_exits must be a positive integer, got {num_exits!r}")
    # The reference fills a float32 tensor with the float64 p * 1.0 / 20.
    return _geometric_fractions([budget_index * 1.0 / 20], int(num_exits))[0]


def _exit_counts(fractions, num_samples):
    """n_k = floor(N * q_k), the product taken in float32 as in the reference."""
    counts = np.floor(_F32(num_samples) * fractions)
    # Any n_k > N is simply never reached; clipping keeps the int cast safe.
    return np.minimum(counts, num_samples + 1).astype(np.int64)


def _descending_orders(conf):
    # Any descending order gives the same thresholds (see _thresholds_from_counts);
    # a stable sort just makes it deterministic.
    return np.argsort(-conf, axis=1, kind="stable")


def _thresholds_from_counts(conf, orders, counts):
    """Thresholds (M, K) sending ``counts[m, k]`` not-yet-exited samples out of exit k.

    T_k is the conf_k of the counts[k]-th not-yet-exited sample in descending
    conf_k order, i.e. the counts[k]-th largest value of that multiset, so ties
    cannot change it whichever tied sample a sort puts first.  Ties at T_k do
    make more than counts[k] samples exit, exactly as in the reference.
    Vectorised over the M count vectors; all comparisons stay in float32.
    """
    num_exits, num_samples = conf.shape
    thresholds = np.full((len(counts), num_exits), NEVER, dtype=_F32)
    exited = np.zeros((len(counts), num_samples), dtype=bool)
    for k in range(num_exits - 1):
        n = counts[:, k]
        # n = 0 is never "reached": the reference's count starts at 1.
        if k == 0:  # nobody has exited yet: the n-th counted is the n-th in order
            reached = np.flatnonzero((n > 0) & (n <= num_samples))
            position = n[reached] - 1
        else:
            running = np.cumsum(~exited[:, orders[k]], axis=1, dtype=np.int32)
            reached = np.flatnonzero((n > 0) & (running[:, -1] >= n))
            # running only grows, so the entries below n end where it first hits n.
            position = np.count_nonzero(running[reached] < n[reached, None], axis=1)
        thresholds[reached, k] = conf[k, orders[k][position]]
        exited |= conf[k] >= thresholds[:, k:k + 1]
    thresholds[:, -1] = ALWAYS
    return thresholds


def find_thresholds(scores, exit_fractions):
    """The published thresholds (float32, shape (K,)) realising exit distribution q.

    ``scores``: :class:`ExitScores` or softmax scores (K, N, C).  For k = 0..K-2,
    n_k = floor(N q_k); T_k is the conf_k of the n_k-th sample (descending
    conf_k) among those not yet exited, or 1e8 when fewer remain or n_k = 0;
    then every sample with conf_k >= T_k exits.  T_{K-1} = -1e8.
    """
    scores = _as_scores(scores)
    fractions = _check_fractions(exit_fractions, scores)
    conf = scores.confidence
    counts = _exit_counts(fractions, conf.shape[1])
    return _thresholds_from_counts(conf, _descending_orders(conf), counts[None])[0]


# --------------------------------------------------------------------------
# evaluation
# --------------------------------------------------------------------------

def assign_exits(scores, thresholds):
    """Per-sample exit index (0-based, int64) and prediction (argmax at that exit).

    A sample exits at the first k with conf_k >= T_k, else at the last exit.
    Class ties go to the lowest index, as torch.max and numpy.argmax do.
    """
    scores = _as_scores(scores)
    thresholds = _check_thresholds(thresholds, scores)
    exits = exit_indices(scores.confidence, thresholds)
    predictions = scores.prediction[exits, np.arange(exits.shape[0])]
    return exits.astype(np.int64), predictions.astype(np.int64)


def _expected_cost(exit_counts, num_samples, flops, published_arithmetic=True):
    """Σ_k (count_k / N) c_k for counts of shape (K,) -> float, or (M, K) -> (M,) float64."""
    exit_counts = np.asarray(exit_counts)
    if not published_arithmetic:
        total = exit_counts @ flops / num_samples
    else:
        # The reference sums float32 tensors: (count_k / N) * float32(c_k), k in order.
        total = np.zeros(exit_counts.shape[:-1], dtype=_F32)
        for k, cost in enumerate(flops):
            share = (exit_counts[..., k].astype(_F32) / _F32(num_samples)).astype(_F32)
            total = (total + (share * _F32(cost)).astype(_F32)).astype(_F32)
    return float(total) if total.ndim == 0 else total.astype(np.float64)


def _accuracy(correct_count, num_samples):
    # Same operation order as the reference: (correct * 100.0) / N in float64.
    return np.asarray(correct_count, dtype=np.float64) * 100.0 / num_samples


def evaluate(scores, targets, flops, thresholds, *, published_arithmetic=True):
    """(top-1 accuracy in %, expected GFLOPs per image) of ``thresholds`` on a set.

    The expected cost is Σ_k (share exiting at k) · flops[k].  By default it is
    accumulated in float32 as the published code does, which reproduces its
    reported figures exactly; ``published_arithmetic=False`` uses float64.
    """
    scores = _as_scores(scores)
    targets = _check_targets(targets, scores)
    flops = _check_flops(flops, scores)
    exits, predictions = assign_exits(scores, thresholds)
    num_exits, num_samples = scores.confidence.shape
    counts = np.bincount(exits, minlength=num_exits)
    accuracy = float(_accuracy(np.count_nonzero(predictions == targets), num_samples))
    return accuracy, _expected_cost(counts, num_samples, flops, published_arithmetic)


def anytime_accuracy(scores, targets):
    """Top-1 accuracy (%) of each exit on its own, shape (K,) float64."""
    scores = _as_scores(scores)
    targets = _check_targets(targets, scores)
    correct = np.count_nonzero(scores.prediction == targets, axis=1)
    return correct * 100.0 / scores.prediction.shape[1]


def budget_curve(scores, targets, flops):
    """The published 59-budget curve: one dict per p in :data:`BUDGET_INDICES`.

    Keys: budget_index, exit_fractions (q, float32), thresholds (float32),
    accuracy (%), gflops (expected per image), exit_shares (share of samples
    answered at each exit, float64, sums to 1).
    """
    scores = _as_scores(scores)
    targets = _check_targets(targets, scores)
    flops = _check_flops(flops, scores)
    num_exits, num_samples = scores.confidence.shape
    curve = []
    for p in BUDGET_INDICES:
        q = exit_fractions(p, num_exits)
        thresholds = find_thresholds(scores, q)
        exits, predictions = assign_exits(scores, thresholds)
        counts = np.bincount(exits, minlength=num_exits)
        curve.append({
            "budget_index": p,
            "exit_fractions": q,
            "thresholds": thresholds,
            "accuracy": float(_accuracy(np.count_nonzero(predictions == targets), num_samples)),
            "gflops": _expected_cost(counts, num_samples, flops),
            "exit_shares": counts / num_samples,
        })
    return curve
