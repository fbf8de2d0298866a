"""Budgeted batch classification for the DVT cascade (docs/thresholds.md), in plain numpy.

A K-exit cascade answers a sample at the first exit k whose confidence
``conf_k = max_c P[k, i, c]`` reaches that exit's threshold ``T_k``.  This
module finds such thresholds and scores them:

* :func:`exit_fractions` and :func:`find_thresholds` reproduce the published
  threshold search bit for bit: budget index p = 1..59 (:data:`BUDGET_INDICES`)
  fixes a geometric exit distribution q, and the thresholds send
  ``floor(N * q_k)`` calibration samples out of exit k.
* :func:`assign_exits` / :func:`evaluate` give each sample's exit and
  prediction, the accuracy (%) and the expected cost per image;
  :func:`anytime_accuracy` and :func:`budget_curve` summarise a model.
* :func:`thresholds_for_budget` and :func:`thresholds_for_accuracy` (not in the
  published code) pick thresholds for a given cost or accuracy target from a
  fine, continuous version of the same geometric family.

Numerics follow the published (PyTorch, float32) code so that thresholds and
reported figures match it exactly: confidences, exit fractions and thresholds
are float32, and the expected cost is accumulated in float32.  This matters:
e.g. for K = 2, p = 55, N = 600 the float32 product ``N * q_0`` floors to 159
where exact arithmetic gives 160, so float64 would pick a different threshold.

No mindspore import here: this runs on a host, next to any deployment engine
that must agree with :func:`assign_exits`.
"""
import logging
import math
import numbers

import numpy as np

__all__ = [
    "BUDGET_INDICES", "NEVER", "ALWAYS", "softmax",
    "exit_fractions", "find_thresholds", "assign_exits", "evaluate",
    "anytime_accuracy", "budget_curve",
    "thresholds_for_budget", "thresholds_for_accuracy",
]

log = logging.getLogger(__name__)

#: The 59 published budgets: index p gives the geometric ratio r = p / 20.
BUDGET_INDICES = range(1, 60)
#: Threshold meaning "nobody exits here" (no confidence reaches it).
NEVER = np.float32(1e8)
#: Threshold of the last exit: everybody still running answers there.
ALWAYS = np.float32(-1e8)

_F32 = np.float32
# Grid size of the continuous family searched by thresholds_for_*; every
# candidate costs O(K N), so this stays fast even for N = 50,000.
_FAMILY_GRID = 2049
# exp(x) overflows float32 above ~88.7; keep K * |log r| below this bound.
_MAX_LOG_SPAN = 80.0
# Elements per temporary array when candidates are evaluated together.
_CHUNK_ELEMENTS = 1 << 22


# --------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------

def softmax(logits):
    """Softmax over the last axis in float32: the scores every confidence here is taken from.

    The offline evaluation and the deployment engine both call this, so that equal logits give
    bit-equal confidences on both sides of a threshold."""
    logits = np.asarray(logits, dtype=np.float32)
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


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


def _check_targets(targets, probs):
    _, n, c = probs.shape
    arr = np.asarray(targets)
    if arr.shape != (n,):
        raise ValueError(f"targets has shape {arr.shape} but probs has shape {probs.shape}; "
                         f"expected ({n},)")
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"targets must be integer class labels, got dtype {arr.dtype}")
    if arr.min() < 0 or arr.max() >= c:
        raise ValueError(f"targets must lie in [0, {c}) for {c} classes, "
                         f"got range [{arr.min()}, {arr.max()}]")
    return arr


def _check_per_exit(values, probs, name):
    """A real (K,) vector matching probs' number of exits."""
    arr = np.asarray(values)
    k = probs.shape[0]
    if arr.shape != (k,):
        raise ValueError(f"{name} has shape {arr.shape} but probs has shape {probs.shape} "
                         f"(K = {k} exits); expected ({k},)")
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise ValueError(f"{name} must be real numbers, got dtype {arr.dtype}")
    return arr


def _check_flops(flops, probs):
    arr = _check_per_exit(flops, probs, "flops").astype(np.float64)
    if not np.isfinite(arr).all() or (arr < 0).any():
        raise ValueError(f"flops must be finite and non-negative, got {arr.tolist()}")
    if (np.diff(arr) < 0).any():
        raise ValueError(f"flops must be the cumulative cost of exiting at each exit, so "
                         f"non-decreasing; got {arr.tolist()}")
    return arr


def _check_thresholds(thresholds, probs):
    # Stored thresholds are float32, like the published search's tensor.
    arr = _check_per_exit(thresholds, probs, "thresholds").astype(_F32)
    if np.isnan(arr).any():
        raise ValueError(f"thresholds must not be NaN, got {arr.tolist()}")
    return arr


def _check_fractions(fractions, probs):
    arr = _check_per_exit(fractions, probs, "exit_fractions").astype(_F32)
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


def find_thresholds(probs, exit_fractions):
    """The published thresholds (float32, shape (K,)) realising exit distribution q.

    For k = 0..K-2, n_k = floor(N q_k); T_k is the conf_k of the n_k-th sample
    (descending conf_k) among those not yet exited, or 1e8 when fewer remain
    or n_k = 0; then every sample with conf_k >= T_k exits.  T_{K-1} = -1e8.
    """
    probs = _check_probs(probs)
    fractions = _check_fractions(exit_fractions, probs)
    conf = probs.max(axis=2)
    counts = _exit_counts(fractions, probs.shape[1])
    return _thresholds_from_counts(conf, _descending_orders(conf), counts[None])[0]


# --------------------------------------------------------------------------
# evaluation
# --------------------------------------------------------------------------

def _exits_from_conf(conf, thresholds):
    """Exit index per sample: (K,) thresholds -> (N,), (M, K) -> (M, N)."""
    num_exits = conf.shape[0]
    # The last exit always answers: there is nowhere further to go.  (The
    # reference instead drops such samples from both tallies; with its own
    # last threshold of -1e8 the two agree.)
    exits = np.full(thresholds.shape[:-1] + conf.shape[1:], num_exits - 1, dtype=np.int64)
    for k in reversed(range(num_exits - 1)):  # so the first exit reached wins
        exits = np.where(conf[k] >= thresholds[..., k, None], k, exits)
    return exits


def assign_exits(probs, thresholds):
    """Per-sample exit index (0-based, int64) and prediction (argmax at that exit).

    A sample exits at the first k with conf_k >= T_k, else at the last exit.
    Class ties go to the lowest index, as torch.max and numpy.argmax do.
    """
    probs = _check_probs(probs)
    thresholds = _check_thresholds(thresholds, probs)
    exits = _exits_from_conf(probs.max(axis=2), thresholds)
    samples = np.arange(probs.shape[1])
    predictions = probs[exits, samples].argmax(axis=1)
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


def evaluate(probs, targets, flops, thresholds, *, published_arithmetic=True):
    """(top-1 accuracy in %, expected GFLOPs per image) of ``thresholds`` on a set.

    The expected cost is Σ_k (share exiting at k) · flops[k].  By default it is
    accumulated in float32 as the published code does, which reproduces its
    reported figures exactly; ``published_arithmetic=False`` uses float64.
    """
    probs = _check_probs(probs)
    targets = _check_targets(targets, probs)
    flops = _check_flops(flops, probs)
    exits, predictions = assign_exits(probs, thresholds)
    num_samples = probs.shape[1]
    counts = np.bincount(exits, minlength=probs.shape[0])
    accuracy = float(_accuracy(np.count_nonzero(predictions == targets), num_samples))
    return accuracy, _expected_cost(counts, num_samples, flops, published_arithmetic)


def anytime_accuracy(probs, targets):
    """Top-1 accuracy (%) of each exit on its own, shape (K,) float64."""
    probs = _check_probs(probs)
    targets = _check_targets(targets, probs)
    correct = np.count_nonzero(probs.argmax(axis=2) == targets, axis=1)
    return correct * 100.0 / probs.shape[1]


def budget_curve(probs, targets, flops):
    """The published 59-budget curve: one dict per p in :data:`BUDGET_INDICES`.

    Keys: budget_index, exit_fractions (q, float32), thresholds (float32),
    accuracy (%), gflops (expected per image), exit_shares (share of samples
    answered at each exit, float64, sums to 1).
    """
    probs = _check_probs(probs)
    targets = _check_targets(targets, probs)
    flops = _check_flops(flops, probs)
    num_exits, num_samples, _ = probs.shape
    curve = []
    for p in BUDGET_INDICES:
        q = exit_fractions(p, num_exits)
        thresholds = find_thresholds(probs, q)
        exits, predictions = assign_exits(probs, thresholds)
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


# --------------------------------------------------------------------------
# choosing thresholds for a target (not in the published code)
# --------------------------------------------------------------------------

def _family_fractions(num_exits, num_samples):
    """Exit distributions searched by thresholds_for_*: the geometric family.

    A log-spaced grid of r covering every r at which some n_k can still change
    (about 1/(4N) .. 4N), the 59 published r = p/20, and the two limits:
    everyone at the first exit (r -> 0) and everyone at the last (r -> inf).
    """
    span = _MAX_LOG_SPAN / num_exits
    lo = max(-math.log(4.0 * num_samples), -span)
    hi = min(math.log(4.0 * num_samples), span)
    ratios = np.concatenate([np.exp(np.linspace(lo, hi, _FAMILY_GRID)),
                             np.array(BUDGET_INDICES, dtype=np.float64) / 20])
    ratios = np.unique(ratios)
    limits = np.eye(num_exits, dtype=_F32)[[0, -1]]
    return np.concatenate([limits[:1], _geometric_fractions(ratios, num_exits), limits[1:]])


def _family_candidates(probs, flops, targets=None):
    """Distinct threshold vectors of the family with their cost, proxy and accuracy.

    Returns a dict of arrays over the M candidates, in family order (cheap end
    first): thresholds (M, K), gflops, proxy and, given targets, accuracy.
    The proxy is the mean confidence at the exit, the model's own estimate of
    its accuracy, used when no labels are given.
    """
    num_exits, num_samples, _ = probs.shape
    conf = probs.max(axis=2)
    predictions = probs.argmax(axis=2)
    orders = _descending_orders(conf)
    counts = _exit_counts(_family_fractions(num_exits, num_samples), num_samples)
    # Thresholds depend on q only through the integer counts n_k (k < K-1),
    # so many grid points collapse onto one candidate.
    _, first = np.unique(counts[:, :-1], axis=0, return_index=True)
    counts = counts[np.sort(first)]
    samples = np.arange(num_samples)
    parts = []
    # Chunks keep the (M, K, N) temporaries to a few tens of MB at N = 50,000.
    chunk = max(1, _CHUNK_ELEMENTS // (num_exits * num_samples))
    for start in range(0, len(counts), chunk):
        thresholds = _thresholds_from_counts(conf, orders, counts[start:start + chunk])
        exits = _exits_from_conf(conf, thresholds)
        exit_counts = np.stack([np.count_nonzero(exits == k, axis=1)
                                for k in range(num_exits)], axis=1)
        part = {
            "thresholds": thresholds,
            "gflops": _expected_cost(exit_counts, num_samples, flops),
            "proxy": conf[exits, samples].mean(axis=1, dtype=np.float64),
        }
        if targets is not None:
            correct = np.count_nonzero(predictions[exits, samples] == targets, axis=1)
            part["accuracy"] = _accuracy(correct, num_samples)
        parts.append(part)
    log.debug("threshold family: %d distinct candidates", len(counts))
    return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}


def _check_target(value, name):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def thresholds_for_budget(probs, flops, target_gflops):
    """Thresholds whose expected cost on ``probs`` is <= ``target_gflops``.

    Among the geometric family (published q with continuous r, plus its
    limits) the feasible candidate with the highest mean confidence at exit
    wins (lower cost breaks ties).  A fixed candidate set means a larger
    budget never yields a lower proxy.  Needs no labels, so ``probs`` may be
    any unlabelled calibration set.  Cost is measured as :func:`evaluate`
    reports it (published float32 arithmetic).
    """
    probs = _check_probs(probs)
    flops = _check_flops(flops, probs)
    target = _check_target(target_gflops, "target_gflops")
    family = _family_candidates(probs, flops)
    feasible = np.flatnonzero(family["gflops"] <= target)
    if feasible.size == 0:
        cheapest = family["gflops"].min()
        raise ValueError(f"target_gflops={target:g} is below the cheapest attainable expected "
                         f"cost, {cheapest:.9g} GFLOPs per image (every sample leaving at exit "
                         f"1); attainable range is [{cheapest:.9g}, {family['gflops'].max():.9g}]")
    # Highest proxy first, then lowest cost.
    ranked = np.lexsort((family["gflops"][feasible], -family["proxy"][feasible]))
    return family["thresholds"][feasible[ranked[0]]]


def thresholds_for_accuracy(probs, targets, flops, target_accuracy):
    """The cheapest thresholds of the family reaching ``target_accuracy`` (%).

    Accuracy is measured on the labelled calibration set (``probs``,
    ``targets``); among candidates reaching the target the lowest expected
    cost wins (higher accuracy breaks ties).
    """
    probs = _check_probs(probs)
    targets = _check_targets(targets, probs)
    flops = _check_flops(flops, probs)
    target = _check_target(target_accuracy, "target_accuracy")
    if not 0.0 <= target <= 100.0:
        raise ValueError(f"target_accuracy is a percentage in [0, 100], got {target:g}")
    family = _family_candidates(probs, flops, targets)
    feasible = np.flatnonzero(family["accuracy"] >= target)
    if feasible.size == 0:
        top = np.lexsort((family["gflops"], -family["accuracy"]))[0]
        raise ValueError(f"target_accuracy={target:g}% is not reachable on this calibration "
                         f"set: the best thresholds found reach {family['accuracy'][top]:.4g}% "
                         f"(at {family['gflops'][top]:.6g} GFLOPs per image)")
    # Lowest cost first, then highest accuracy.
    ranked = np.lexsort((-family["accuracy"][feasible], family["gflops"][feasible]))
    return family["thresholds"][feasible[ranked[0]]]
