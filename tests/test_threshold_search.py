"""Budgeted batch classification (dvt_ms.calibrate.search) against the published search's golden output."""
import ast
import math
import pathlib

import numpy as np
import pytest

from dvt_ms.calibrate import search
from dvt_ms.calibrate.search import (
    BUDGET_INDICES, anytime_accuracy, assign_exits, budget_curve, evaluate, exit_fractions, find_thresholds,
)
from dvt_ms.contract.exit_rule import softmax

NEVER, ALWAYS = 1e8, -1e8


@pytest.fixture(scope="module")
def golden(golden_dir):
    with np.load(golden_dir / "thresholds.npz") as data:
        return {key: data[key] for key in data.files}


def _bits(array):
    return np.asarray(array, dtype=np.float32).view(np.int32)


def _spec_thresholds(probs, fractions):
    """docs/thresholds.md read literally, one sample at a time (slow, independent of the module)."""
    num_exits, num_samples, _ = probs.shape
    conf = probs.max(axis=2)
    exited = [False] * num_samples
    thresholds = [np.float32(NEVER)] * num_exits
    for k in range(num_exits - 1):
        wanted = math.floor(np.float32(num_samples) * np.float32(fractions[k]))
        count = 0
        for i in sorted(range(num_samples), key=lambda i: -conf[k, i]):
            if not exited[i]:
                count += 1
                if count == wanted:
                    thresholds[k] = conf[k, i]
                    break
        exited = [exited[i] or conf[k, i] >= thresholds[k] for i in range(num_samples)]
    thresholds[-1] = np.float32(ALWAYS)
    return np.array(thresholds, dtype=np.float32)


# ---------------------------------------------------------------- published search

def test_budget_indices_are_the_59_published_budgets(golden):
    assert list(BUDGET_INDICES) == list(range(1, 60))
    assert len(BUDGET_INDICES) == golden["thresholds"].shape[0]


@pytest.mark.parametrize("p", [1, 7, 20, 33, 59])
@pytest.mark.parametrize("num_exits", [2, 3, 5])
def test_exit_fractions_are_normalised_geometric(p, num_exits):
    q = exit_fractions(p, num_exits)
    r = p / 20
    exact = np.array([r ** (k + 1) for k in range(num_exits)])
    assert q.dtype == np.float32 and q.shape == (num_exits,)
    np.testing.assert_allclose(q, exact / exact.sum(), rtol=1e-5)


def test_thresholds_match_golden_bitwise(golden):
    probs = golden["probs"]
    for row, p in enumerate(BUDGET_INDICES):
        found = find_thresholds(probs, exit_fractions(p, probs.shape[0]))
        assert found.dtype == np.float32
        np.testing.assert_array_equal(_bits(found), _bits(golden["thresholds"][row]),
                                      err_msg=f"budget index {p}")


def test_evaluate_matches_golden_accuracy_and_cost(golden):
    for row in range(len(BUDGET_INDICES)):
        accuracy, gflops = evaluate(golden["probs"], golden["targets"], golden["flops"],
                                    golden["thresholds"][row])
        assert accuracy == pytest.approx(golden["acc"][row], abs=1e-9)
        assert gflops == pytest.approx(golden["expected_flops"][row], abs=1e-9)


def test_budget_curve_matches_golden(golden):
    curve = budget_curve(golden["probs"], golden["targets"], golden["flops"])
    assert [point["budget_index"] for point in curve] == list(BUDGET_INDICES)
    for row, point in enumerate(curve):
        np.testing.assert_array_equal(_bits(point["thresholds"]), _bits(golden["thresholds"][row]))
        assert point["accuracy"] == pytest.approx(golden["acc"][row], abs=1e-9)
        assert point["gflops"] == pytest.approx(golden["expected_flops"][row], abs=1e-9)
        assert point["exit_shares"].sum() == pytest.approx(1.0)
        # The shares and the cost describe the same exits.
        assert point["exit_shares"] @ golden["flops"] == pytest.approx(point["gflops"], abs=1e-6)


def test_published_cost_is_float32_arithmetic(golden):
    """The golden costs carry float32 rounding; float64 is close but not equal."""
    gaps = []
    for row in range(len(BUDGET_INDICES)):
        args = (golden["probs"], golden["targets"], golden["flops"], golden["thresholds"][row])
        exact = evaluate(*args, published_arithmetic=False)[1]
        exits, _ = assign_exits(golden["probs"], golden["thresholds"][row])
        shares = np.bincount(exits, minlength=3) / exits.size
        assert exact == pytest.approx(float(shares @ golden["flops"]), abs=1e-12)
        gaps.append(abs(exact - golden["expected_flops"][row]))
    assert max(gaps) < 1e-6
    assert max(gaps) > 1e-9


def test_exit_counts_use_float32_products():
    """K=2, p=55, N=600: exactly q_0 = 4/15 and N q_0 = 160, but in float32 it floors to 159."""
    num_samples = 600
    conf = np.linspace(0.2, 0.9, num_samples, dtype=np.float32)  # all distinct
    probs = np.stack([conf, conf])[:, :, None]
    thresholds = find_thresholds(probs, exit_fractions(55, 2))
    assert thresholds[0] == np.sort(conf)[::-1][159 - 1]
    exits, _ = assign_exits(probs, thresholds)
    assert np.count_nonzero(exits == 0) == 159


def test_find_thresholds_matches_literal_spec_with_ties():
    rng = np.random.default_rng(3)
    # Scores on a coarse grid: many equal confidences, within and across exits.
    raw = rng.integers(0, 6, size=(4, 150, 5)).astype(np.float64) + 0.1
    probs = (raw / raw.sum(axis=2, keepdims=True)).round(2).astype(np.float32)
    fractions = [exit_fractions(p, 4) for p in (1, 10, 20, 40, 59)]
    fractions += [np.array(q, dtype=np.float32) for q in
                  ([0.0, 0.5, 0.5, 0.0], [0.9, 0.9, 0.0, 0.1], [1.0, 0.0, 0.0, 0.0],
                   [0.001, 0.3, 0.3, 0.399])]
    for q in fractions:
        np.testing.assert_array_equal(_bits(find_thresholds(probs, q)),
                                      _bits(_spec_thresholds(probs, q)), err_msg=str(q))


def test_tied_threshold_lets_all_ties_exit_and_later_count_skips_exited():
    conf0 = [0.9, 0.9, 0.9, 0.5, 0.4, 0.3, 0.2, 0.1]
    conf1 = [0.95, 0.1, 0.2, 0.3, 0.8, 0.7, 0.6, 0.5]
    probs = np.zeros((3, 8, 2), dtype=np.float32)
    probs[0, :, 0], probs[1, :, 0] = conf0, conf1
    probs[2, :, 0] = 0.5
    # n_0 = floor(8 * 0.125) = 1: T_0 = 0.9, and all three 0.9s exit.
    # n_1 = 2 among the five left (0.8, 0.7, 0.6, 0.5, 0.3), not counting the 0.95.
    thresholds = find_thresholds(probs, [0.125, 0.25, 0.625])
    np.testing.assert_array_equal(thresholds, np.float32([0.9, 0.7, ALWAYS]))
    exits, _ = assign_exits(probs, thresholds)
    np.testing.assert_array_equal(exits, [0, 0, 0, 2, 1, 1, 2, 2])


def test_unreached_counts_give_never():
    probs = np.full((3, 10, 2), 0.5, dtype=np.float32)
    # n_0 = 0; n_1 = 11 > 10 samples left.
    np.testing.assert_array_equal(find_thresholds(probs, [0.05, 1.1, 0.0]),
                                  np.float32([NEVER, NEVER, ALWAYS]))


def test_at_least_n_k_samples_exit_at_each_exit(golden):
    probs = golden["probs"]
    for p in BUDGET_INDICES:
        q = exit_fractions(p, 3)
        thresholds = find_thresholds(probs, q)
        exits, _ = assign_exits(probs, thresholds)
        for k in range(2):
            if thresholds[k] != np.float32(NEVER):
                assert np.count_nonzero(exits == k) >= math.floor(np.float32(600) * q[k])


# ---------------------------------------------------------------- reduced scores

def test_scores_reduced_per_batch_equal_the_kept_softmax():
    """(confidence, prediction) taken batch by batch from logits are bit-identical to max/argmax of
    the whole float32 softmax, ties included, and every function gives the same results on them."""
    rng = np.random.default_rng(5)
    logits = rng.normal(size=(3, 300, 20)).astype(np.float32)
    logits[:, ::7, 3] = logits[:, ::7, 11] = 4.0   # exact ties: the lower class index wins
    probs = softmax(logits)
    targets = rng.integers(0, 20, 300)
    kept = search.exit_scores(probs)
    reduced = search.concatenate_scores(search.exit_scores_from_logits(list(logits[:, start:start + 64]))
                                        for start in range(0, 300, 64))
    np.testing.assert_array_equal(_bits(reduced.confidence), _bits(kept.confidence))
    np.testing.assert_array_equal(reduced.prediction, kept.prediction)
    assert (reduced.prediction[:, ::7] == 3).all()
    flops = [1.0, 2.0, 4.0]
    for p in (1, 20, 59):
        thresholds = find_thresholds(probs, exit_fractions(p, 3))
        np.testing.assert_array_equal(_bits(find_thresholds(reduced, exit_fractions(p, 3))), _bits(thresholds))
        assert evaluate(reduced, targets, flops, thresholds) == evaluate(probs, targets, flops, thresholds)
    np.testing.assert_array_equal(anytime_accuracy(reduced, targets), anytime_accuracy(probs, targets))
    with pytest.raises(ValueError, match=r"targets must lie in \[0, 20\)"):
        evaluate(reduced, targets + 20, flops, thresholds)


# ---------------------------------------------------------------- evaluation

def test_all_exit_last_when_earlier_thresholds_unreachable(golden):
    probs, targets, flops = golden["probs"], golden["targets"], golden["flops"]
    exits, predictions = assign_exits(probs, [NEVER, NEVER, ALWAYS])
    assert (exits == 2).all()
    np.testing.assert_array_equal(predictions, probs[2].argmax(axis=1))
    accuracy, gflops = evaluate(probs, targets, flops, [NEVER, NEVER, ALWAYS])
    assert accuracy == pytest.approx(100.0 * np.mean(probs[2].argmax(axis=1) == targets))
    assert gflops == pytest.approx(2.6, abs=1e-6)


def test_all_exit_first_when_first_threshold_is_minus_1e8(golden):
    probs, targets, flops = golden["probs"], golden["targets"], golden["flops"]
    for rest in ([NEVER, ALWAYS], [0.0, ALWAYS], [ALWAYS, ALWAYS]):
        exits, predictions = assign_exits(probs, [ALWAYS] + rest)
        assert (exits == 0).all()
        np.testing.assert_array_equal(predictions, probs[0].argmax(axis=1))
        assert evaluate(probs, targets, flops, [ALWAYS] + rest) == (
            pytest.approx(100.0 * np.mean(probs[0].argmax(axis=1) == targets)), 0.5)


def test_exit_is_first_threshold_reached(golden):
    probs = golden["probs"]
    conf = probs.max(axis=2)
    for row in (0, 20, 58):
        thresholds = golden["thresholds"][row]
        exits, predictions = assign_exits(probs, thresholds)
        for i in range(probs.shape[1]):
            first = next(k for k in range(3) if conf[k, i] >= thresholds[k])
            assert exits[i] == first
            assert predictions[i] == np.argmax(probs[first, i])


def test_last_exit_answers_whatever_its_threshold():
    probs = np.full((2, 4, 2), 0.5, dtype=np.float32)
    exits, _ = assign_exits(probs, [NEVER, 0.9])
    np.testing.assert_array_equal(exits, [1, 1, 1, 1])


def test_anytime_accuracy(golden):
    probs, targets = golden["probs"], golden["targets"]
    expected = [100.0 * np.mean(probs[k].argmax(axis=1) == targets) for k in range(3)]
    np.testing.assert_allclose(anytime_accuracy(probs, targets), expected, atol=1e-12)
    # Exiting everyone at exit k scores exactly that exit's accuracy.
    only_last = evaluate(probs, targets, golden["flops"], [NEVER, NEVER, ALWAYS])[0]
    assert only_last == pytest.approx(expected[2])


# ---------------------------------------------------------------- validation

def test_shape_and_exit_count_errors(golden):
    probs, targets, flops = golden["probs"], golden["targets"], golden["flops"]
    with pytest.raises(ValueError, match=r"targets has shape \(599,\).*\(3, 600, 10\)"):
        evaluate(probs, targets[:599], flops, [NEVER, NEVER, ALWAYS])
    with pytest.raises(ValueError, match=r"flops has shape \(2,\).*K = 3"):
        evaluate(probs, targets, flops[:2], [NEVER, NEVER, ALWAYS])
    with pytest.raises(ValueError, match=r"thresholds has shape \(4,\).*K = 3"):
        assign_exits(probs, [NEVER, NEVER, NEVER, ALWAYS])
    with pytest.raises(ValueError, match=r"exit_fractions has shape \(2,\)"):
        find_thresholds(probs, [0.5, 0.5])
    with pytest.raises(ValueError, match=r"shape \(600, 10\)"):
        find_thresholds(probs[0], [1.0])


def test_value_errors(golden):
    probs, targets, flops = golden["probs"], golden["targets"], golden["flops"]
    for bad in (probs * 2, probs - 0.5, np.where(probs > 0.5, np.nan, probs)):
        with pytest.raises(ValueError, match=r"\[0, 1\]"):
            find_thresholds(bad, exit_fractions(1, 3))
    with pytest.raises(ValueError, match="non-decreasing"):
        evaluate(probs, targets, flops[::-1], [NEVER, NEVER, ALWAYS])
    with pytest.raises(ValueError, match=r"targets must lie in \[0, 10\)"):
        evaluate(probs, targets + 10, flops, [NEVER, NEVER, ALWAYS])
    with pytest.raises(ValueError, match="NaN"):
        assign_exits(probs, [np.nan, NEVER, ALWAYS])
    with pytest.raises(ValueError, match="non-negative"):
        find_thresholds(probs, [-0.1, 0.5, 0.6])
    for index in (0, 1.5, True):
        with pytest.raises(ValueError, match="budget_index"):
            exit_fractions(index, 3)


def test_module_imports_numpy_and_the_contract_only():
    tree = ast.parse(pathlib.Path(search.__file__).read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree)
                if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and not node.level}
    relative = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level}
    assert imported <= {"numbers", "numpy"}
    assert all(module.startswith("contract.") for module in relative), relative
