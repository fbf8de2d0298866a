"""The budget controller and the deadline policy, run by the real ``EarlyExitRun`` on a replay
engine whose exit confidences (and, for the deadline, exit times) are scripted.

Truth comes from outside the policies: the offline exit rule (``search.assign_exits``) says where
each image exits under given thresholds, the published search (``search.budget_curve``) builds the
budget table on a calibration set, and the scripted clock says when each exit ends."""
import numpy as np
import pytest

from dvt_ms.calibrate import search
from dvt_ms.deploy.controller import BudgetController, predicted_row_costs
from dvt_ms.deploy.deadline import HISTORY, DeadlinePolicy, measure_exit_seconds
from dvt_ms.contract.thresholds import select_row
from dvt_ms.deploy.replay import ManualClock, ReplayEngine, replay_images

NUM_CLASSES = 8
EXIT_COST = [2.0, 3.0, 4.0]     # cumulative; a spread small enough that windows of 1024 images are not noisy
WINDOW = 1024
BUDGET = 2.9


def scripted_logits(difficulty, seed):
    """(K, N, C) logits: each exit's confidence falls with the image's difficulty and rises with
    the exit (later exits see more); the prediction is right with that confidence. Returns the
    logits and the labels."""
    rng = np.random.default_rng(seed)
    num = len(difficulty)
    signal = np.array([0.5, 1.5, 2.5])[:, None] - 5.0 * np.asarray(difficulty)[None] + rng.normal(0, 1, (3, num))
    confidence = 1 / NUM_CLASSES + (1 - 1 / NUM_CLASSES) / (1 + np.exp(-signal))
    labels = rng.integers(0, NUM_CLASSES, num)
    right = rng.random((3, num)) < confidence
    predictions = np.where(right, labels[None], (labels[None] + rng.integers(1, NUM_CLASSES, (3, num))) % NUM_CLASSES)
    probs = np.repeat(((1 - confidence) / (NUM_CLASSES - 1))[..., None], NUM_CLASSES, axis=2)
    np.put_along_axis(probs, predictions[..., None], confidence[..., None], axis=2)
    return np.log(probs).astype(np.float32), labels


def calibration_difficulty(count, rng):
    return rng.beta(1.0, 2.5, count)


@pytest.fixture(scope="module")
def table():
    """The thresholds document of the scripted model: the 59 published budgets on 20,000
    calibration images."""
    logits, labels = scripted_logits(calibration_difficulty(20000, np.random.default_rng(0)), seed=1)
    rows = [{"budget_index": row["budget_index"], "exit_thresholds": [float(t) for t in row["thresholds"]],
             "calibration_gflops": row["gflops"], "calibration_accuracy": row["accuracy"]}
            for row in search.budget_curve(search.softmax(logits), labels, EXIT_COST)]
    return {"model": "scripted", "exit_thresholds": rows[0]["exit_thresholds"], "budgets": rows}


def drifting_difficulty(count, rng, hardest_beta=1.0):
    """Calibration-like for the first eighth, then harder and harder: Beta(1, b) with b falling
    from 2.5 to ``hardest_beta`` (mean difficulty 0.29 -> 0.5)."""
    t = np.arange(count) / count
    b = np.where(t < 0.125, 2.5, 2.5 - (2.5 - hardest_beta) * (t - 0.125) / 0.875)
    return rng.beta(1.0, b)


def replay(logits, policy, thresholds, batch_size=256):
    """The stream through a real EarlyExitRun: (exits, predictions)."""
    engine = ReplayEngine(logits, EXIT_COST, max_batch=batch_size)
    run = engine.run(thresholds, batch_size, policy)
    for start in range(0, logits.shape[1], batch_size):
        run.push(replay_images(np.arange(start, min(start + batch_size, logits.shape[1]))))
    run.finish()
    exits, predictions, _ = run.results()
    return exits, predictions


def window_costs(exits, window=WINDOW):
    costs = np.asarray(EXIT_COST)[exits]
    return np.array([costs[start:start + window].mean() for start in range(0, len(costs) - window + 1, window)])


def test_controller_starts_on_the_row_budget_picks_and_targets_its_cost(table):
    controller = BudgetController.from_document(table, EXIT_COST, BUDGET, "table", window=WINDOW)
    start = select_row(table["budgets"], BUDGET)["exit_thresholds"]
    np.testing.assert_array_equal(controller.thresholds_for_next_call(), np.float32(start))
    row = next(row for row in table["budgets"] if row["exit_thresholds"] == start)
    assert controller.target == pytest.approx(row["calibration_gflops"]) and controller.target <= BUDGET


def test_predicted_costs_are_exact_where_an_exit_that_ran_decides(table):
    """Seen with one row's thresholds, an image's exit under any other row is the offline rule's
    whenever that exit is one the image ran; beyond, the prediction lies between the next exit's
    cost and the last's."""
    logits, _ = scripted_logits(calibration_difficulty(3000, np.random.default_rng(5)), seed=6)
    probs = search.softmax(logits)
    rows = np.array([row["exit_thresholds"] for row in table["budgets"]], np.float32)
    seen_with = rows[30]
    seen_exit, _ = search.assign_exits(probs, seen_with)
    confidences = probs.max(axis=2).T.copy()
    confidences[np.arange(3)[None] > seen_exit[:, None]] = np.nan
    predicted = predicted_row_costs(confidences, rows, EXIT_COST)
    for r, thresholds in enumerate(rows):
        true_exit, _ = search.assign_exits(probs, thresholds)
        decided = true_exit <= seen_exit
        np.testing.assert_allclose(predicted[r, decided], np.asarray(EXIT_COST)[true_exit[decided]])
        censored = predicted[r, ~decided]
        lowest = np.asarray(EXIT_COST)[np.minimum(seen_exit[~decided] + 1, 2)]
        assert np.all(censored >= lowest - 1e-9) and np.all(censored <= EXIT_COST[-1] + 1e-9)
    assert (predicted[30] == np.asarray(EXIT_COST)[seen_exit]).all()


def test_controller_holds_the_budget_within_tolerance_while_fixed_thresholds_overshoot(table):
    logits, _ = scripted_logits(drifting_difficulty(12 * WINDOW, np.random.default_rng(2)), seed=3)
    controller = BudgetController.from_document(table, EXIT_COST, BUDGET, "table", window=WINDOW)
    start = controller.thresholds_for_next_call().copy()
    fixed_exits, _ = search.assign_exits(search.softmax(logits), start)
    fixed = window_costs(fixed_exits) / controller.target - 1
    assert fixed[-3:].min() > 0.10, f"the scripted drift should push fixed thresholds well over budget: {fixed}"

    exits, _ = replay(logits, controller, start)
    held = window_costs(exits) / controller.target - 1
    # the first two windows: the controller waits for half a window, then moves
    assert np.all(np.abs(held[2:]) <= 0.05), f"window cost errors {np.round(100 * held, 1)} %"
    summary = controller.summary()
    assert summary["switches"] and [w["gflops"] for w in summary["windows"]] == pytest.approx(
        list(window_costs(exits)))


def test_every_switch_is_recorded_where_the_rows_change(table):
    logits, _ = scripted_logits(drifting_difficulty(8 * WINDOW, np.random.default_rng(2)), seed=3)
    controller = BudgetController.from_document(table, EXIT_COST, BUDGET, "table", window=WINDOW)
    replay(logits, controller, controller.thresholds_for_next_call(), batch_size=1)
    _, exits, costs, rows = controller.answers()
    changes = np.flatnonzero(np.diff(rows)) + 1
    switches = controller.summary()["switches"]
    assert [s["image"] for s in switches] == changes.tolist()
    assert [s["from_row"]["row"] for s in switches] == rows[changes - 1].tolist()
    assert [s["to_row"]["row"] for s in switches] == rows[changes].tolist()
    for switch in switches:     # observed: the window's cost when the controller moved
        window = slice(max(0, switch["image"] - WINDOW), switch["image"])
        assert switch["observed_gflops"] == pytest.approx(costs[window].mean())
        assert switch["target_gflops"] == controller.target
    # each image exited where the offline rule puts it under the row in force
    probs = search.softmax(logits)
    for row in np.unique(rows):
        expected, _ = search.assign_exits(probs[:, rows == row], controller.row_thresholds[row])
        np.testing.assert_array_equal(exits[rows == row], expected)


def test_without_drift_the_controller_never_switches(table):
    logits, _ = scripted_logits(calibration_difficulty(12 * WINDOW, np.random.default_rng(7)), seed=8)
    controller = BudgetController.from_document(table, EXIT_COST, BUDGET, "table", window=WINDOW)
    start = controller.thresholds_for_next_call().copy()
    exits, _ = replay(logits, controller, start)
    summary = controller.summary()
    assert summary["switches"] == [] and summary["final_row"] == summary["start_row"]
    np.testing.assert_array_equal(exits, search.assign_exits(search.softmax(logits), start)[0])


def test_the_controller_never_leaves_the_table(table):
    """Inputs far harder than the cheapest row can pay for: it ends on the cheapest row and says so."""
    logits, _ = scripted_logits(np.ones(6 * WINDOW), seed=9)
    controller = BudgetController.from_document(table, EXIT_COST, BUDGET, "table", window=WINDOW)
    replay(logits, controller, controller.thresholds_for_next_call())
    _, _, _, rows = controller.answers()
    assert rows.min() >= 0 and rows.max() < len(table["budgets"])
    assert controller.row == 0 and controller.summary()["decisions_at_table_end"] > 0


# -- the deadline ------------------------------------------------------------------------------

EXIT_SECONDS = [1 / 64, 1 / 32, 1 / 16]     # 15.625, 31.25 and 62.5 ms: sums are exact in binary
NEVER_BEFORE_LAST = [float(search.NEVER)] * 2 + [float(search.ALWAYS)]


def deadline_run(logits, deadline_ms, thresholds, exit_seconds, **options):
    """Stream ``logits`` one image at a time with scripted exit times: (exits, policy, latencies ms)."""
    clock = ManualClock()
    engine = ReplayEngine(logits, EXIT_COST, max_batch=1, exit_seconds=exit_seconds, clock=clock)
    policy = DeadlinePolicy(deadline_ms, thresholds, [[s] for s in EXIT_SECONDS], clock=clock, **options)
    run = engine.run(thresholds, 1, policy)
    latencies = []
    for index in range(logits.shape[1]):
        begin = clock()
        run.push(replay_images([index]))
        latencies.append(1000 * (clock() - begin))
    return run.results()[0], policy, np.array(latencies)


@pytest.mark.parametrize("deadline_ms, deepest", [(10, 0), (50, 1), (109, 1), (109.375, 2), (200, 2)])
def test_deadline_answers_with_the_deepest_exit_that_ends_in_time(deadline_ms, deepest):
    logits, _ = scripted_logits(np.full(20, 0.5), seed=10)
    exits, policy, latencies = deadline_run(logits, deadline_ms, NEVER_BEFORE_LAST,
                                            lambda k, index: EXIT_SECONDS[k])
    assert (exits == deepest).all()
    assert latencies.max() == pytest.approx(1000 * sum(EXIT_SECONDS[:deepest + 1]))
    summary = policy.summary(latencies_ms=latencies)
    assert summary["answered_by_deadline"] == (1.0 if deepest < 2 else 0.0)
    assert summary["first_exit_late"] == (20 if deadline_ms < 15.625 else 0)
    assert summary["latency_ms"]["p99"] <= max(deadline_ms, 15.625)


def test_deadline_keeps_confident_answers_and_counts_them_apart(table):
    logits, _ = scripted_logits(calibration_difficulty(400, np.random.default_rng(11)), seed=12)
    thresholds = table["budgets"][30]["exit_thresholds"]
    exits, policy, _ = deadline_run(logits, 50, thresholds, lambda k, index: EXIT_SECONDS[k])
    offline, _ = search.assign_exits(search.softmax(logits), np.float32(thresholds))
    np.testing.assert_array_equal(exits, np.minimum(offline, 1))    # exit 3 never ends in 50 ms
    summary = policy.summary()
    assert summary["answered_by_confidence"] == pytest.approx(np.mean(offline < 2))
    assert summary["answered_by_deadline"] == pytest.approx(np.mean(offline == 2))


def test_deadline_relearns_exit_times_as_the_machine_slows_down():
    """Exit 2 becomes 3x slower after image 50: the first slow call teaches the policy, which
    stops at exit 1 from then on; only that one image runs late."""
    logits, _ = scripted_logits(np.full(300, 0.5), seed=13)
    slow_after = 50
    exit_seconds = lambda k, index: EXIT_SECONDS[k] * (3 if k == 1 and index >= slow_after else 1)
    exits, policy, latencies = deadline_run(logits, 50, NEVER_BEFORE_LAST, exit_seconds)
    assert (exits[:slow_after + 1] == 1).all() and (exits[slow_after + 1:] == 0).all()
    assert np.flatnonzero(latencies > 50).tolist() == [slow_after]
    assert policy.summary()["exit_ms_forecast_at_end"][1] == 3 * 31.25


def test_deadline_runs_an_exit_again_once_its_slow_times_are_history():
    """One stray slow call of exit 2 (image 50) makes its forecast miss the deadline, so exit 2 stops
    running and is not re-measured; once image 50 is more than ``history`` images back, the forecast
    is the warm-up's again and exit 2 runs again."""
    logits, _ = scripted_logits(np.full(200, 0.5), seed=13)
    exit_seconds = lambda k, index: EXIT_SECONDS[k] * (3 if k == 1 and index == 50 else 1)
    exits, policy, latencies = deadline_run(logits, 50, NEVER_BEFORE_LAST, exit_seconds, history=64)
    assert (exits[:51] == 1).all() and (exits[51:114] == 0).all() and (exits[114:] == 1).all()
    assert np.flatnonzero(latencies > 50).tolist() == [50]
    assert policy.summary()["exit_ms_forecast_at_end"][1] == 31.25


def test_exit_times_are_measured_through_the_engine_at_batch_size_one():
    logits, _ = scripted_logits(np.full(4, 0.5), seed=14)
    clock = ManualClock()
    engine = ReplayEngine(logits, EXIT_COST, max_batch=1, exit_seconds=lambda k, index: EXIT_SECONDS[k], clock=clock)
    seconds = measure_exit_seconds(engine, repeats=5, clock=clock)
    assert [np.mean(s) for s in seconds] == pytest.approx(EXIT_SECONDS)


def test_exit_times_leave_out_the_slow_first_calls_after_compiling():
    logits, _ = scripted_logits(np.full(4, 0.5), seed=14)
    calls = [0] * len(EXIT_SECONDS)

    def exit_seconds(k, index):     # the first three calls of every exit take ten times as long
        calls[k] += 1
        return EXIT_SECONDS[k] * (10 if calls[k] <= 3 else 1)

    clock = ManualClock()
    engine = ReplayEngine(logits, EXIT_COST, max_batch=1, exit_seconds=exit_seconds, clock=clock)
    seconds = measure_exit_seconds(engine, repeats=5, burn_in=3, seconds=0.0, clock=clock)
    assert [len(s) for s in seconds] == [5] * len(EXIT_SECONDS)
    assert [max(s) for s in seconds] == pytest.approx(EXIT_SECONDS)


def test_exit_times_are_measured_for_a_time_budget_up_to_the_forecasts_history():
    logits, _ = scripted_logits(np.full(4, 0.5), seed=14)
    for image_seconds, expected in ((1e-3, HISTORY), (0.5, 10)):   # 256 images in 2 s; 10 take 5 s
        clock = ManualClock()
        engine = ReplayEngine(logits, EXIT_COST, max_batch=1, clock=clock,
                              exit_seconds=lambda k, index: image_seconds / len(EXIT_COST))
        seconds = measure_exit_seconds(engine, repeats=10, seconds=2.0, clock=clock)
        assert [len(s) for s in seconds] == [expected] * len(EXIT_COST)
