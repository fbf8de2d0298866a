"""The demo summary: budgets, the headline budget, the table and the two pictures, from small
synthetic calibration reports and engine outputs (no model needed)."""
import json

import numpy as np
import pytest
from PIL import Image

from dvt_ms.demo import summary as demo_summary
from dvt_ms.demo.dataset import CLASS_NAMES, write_dataset
from dvt_ms.plots import PALETTE

PER_EXIT = [{"exit": 1, "stage_gflops": 0.001, "cumulative_gflops": 0.001, "calibration_top1": 70.0,
             "validation_top1": 72.0},
            {"exit": 2, "stage_gflops": 0.004, "cumulative_gflops": 0.005, "calibration_top1": 80.0,
             "validation_top1": 81.0},
            {"exit": 3, "stage_gflops": 0.011, "cumulative_gflops": 0.016, "calibration_top1": 84.0,
             "validation_top1": 85.0}]


def _write_eval(directory):
    directory.mkdir()
    (directory / "per_exit.json").write_text(json.dumps(PER_EXIT))
    rows = [{"budget_index": i, "exit_thresholds": [0.9, 0.8, -1.0], "calibration_accuracy": 70 + i,
             "calibration_gflops": 0.001 + 0.001 * i, "validation_accuracy": 71 + i,
             "validation_gflops": 0.001 + 0.001 * i, "validation_exit_shares": [0.5, 0.3, 0.2]}
            for i in range(15)]
    (directory / "budget_curve.json").write_text(json.dumps(rows))
    return directory


def _row(accuracy, expected_gflops, last=85.0):
    return {"accuracy": accuracy, "expected_gflops": expected_gflops, "last_exit_accuracy": last}


def test_budgets_are_fractions_of_the_last_exits_cost_and_never_below_exit_one(tmp_path):
    eval_dir = _write_eval(tmp_path / "eval")
    assert demo_summary.demo_budgets(eval_dir) == pytest.approx([f * 0.016 for f in demo_summary.BUDGET_FRACTIONS])
    assert demo_summary.demo_budgets(eval_dir, fractions=(0.05, 0.5)) == pytest.approx([0.008])


def test_headline_is_the_cheapest_run_within_a_point_of_the_last_exit():
    rows = [_row(80.0, 0.004), _row(84.2, 0.006), _row(85.5, 0.008), _row(84.0, 0.005)]
    assert demo_summary.headline_run(rows) == 3      # exactly 1 point short still counts
    rows[3]["accuracy"] = 83.99
    assert demo_summary.headline_run(rows) == 1


def test_headline_falls_back_to_the_most_accurate_run():
    assert demo_summary.headline_run([_row(70.0, 0.004), _row(79.0, 0.006), _row(75.0, 0.008)]) == 1


@pytest.fixture()
def demo_outputs(tmp_path):
    """A tiny dataset, a calibration report and two engine runs over its val/ images."""
    data = tmp_path / "data"
    write_dataset(data, num_classes=4, train_per_class=0, val_per_class=6, image_size=32)
    difficulties = json.loads((data / "difficulty.json").read_text())
    paths = sorted(str(p) for p in (data / "val").rglob("*.png"))
    runs = []
    for budget, exit_of in ((0.004, lambda i: 1 + (i % 2)), (0.007, lambda i: 1 + (i % 3))):
        records = [{"path": path, "class": CLASS_NAMES[i // 6], "exit": exit_of(i), "correct": i % 5 != 0}
                   for i, path in enumerate(paths)]
        shares = np.bincount([r["exit"] - 1 for r in records], minlength=3) / len(records)
        expected = float(np.dot(shares, [e["cumulative_gflops"] for e in PER_EXIT]))
        runs.append({"budget": budget, "records": records, "summary": {
            "exit_shares": shares.tolist(), "accuracy": 100.0 * np.mean([r["correct"] for r in records]),
            "expected_gflops": expected, "predicted_speedup": 0.016 / expected, "measured_speedup": 1.5,
            "images_per_second": 500.0}})
    return _write_eval(tmp_path / "eval"), runs, data, difficulties, tmp_path / "out"


def test_summary_reports_the_headline_budget_and_the_difficulty_each_exit_answered(demo_outputs):
    eval_dir, runs, data, difficulties, out = demo_outputs
    table = demo_summary.summarize(eval_dir, runs, out, data_dir=data, seconds=412.4)

    saved = json.loads((out / "summary.json").read_text())
    accuracy = 100.0 * 19 / 24   # images 0, 5, 10, 15, 20 wrong
    assert [row["accuracy"] for row in saved["budgets"]] == pytest.approx([accuracy, accuracy])
    headline = saved["headline_budget"]
    assert headline["budget_gflops"] == 0.004    # both runs are under 85 - 1: the most accurate, first
    assert headline["speedup_ratio"] == pytest.approx(1.5 / headline["predicted_speedup"])
    assert headline["share_of_last_exit_gflops"] == pytest.approx(headline["expected_gflops"] / 0.016)

    records = runs[0]["records"]
    for k in (1, 2):
        answered = [difficulties[r["path"].split("/data/")[1]] for r in records if r["exit"] == k]
        assert saved["mean_difficulty_by_exit"][k - 1] == pytest.approx(np.mean(answered))
    assert saved["mean_difficulty_by_exit"][2] is None   # exit 3 answered nothing at this budget

    assert "| 3 | 85.00 | 0.0160 |" in table
    assert f"DVT at 0.0040 GFLOPs: {accuracy:.2f}%" in table
    assert "Demo run time: 412 s." in table
    assert (out / "summary.md").read_text() == table


def test_budget_curve_draws_both_dvt_curves_and_every_exit(demo_outputs):
    eval_dir, runs, data, _, out = demo_outputs
    demo_summary.summarize(eval_dir, runs, out, data_dir=data)
    with Image.open(out / "budget_curve.png") as image:
        assert image.size == (800, 600)
        colours = {colour for _, colour in image.convert("RGB").getcolors(2 ** 20)}
    # two curves and three exit points, each in its own palette colour
    for hex_colour in PALETTE[:5]:
        assert tuple(int(hex_colour[i:i + 2], 16) for i in (1, 3, 5)) in colours, hex_colour


def test_exit_grid_has_one_row_per_exit_that_answered(demo_outputs, tmp_path):
    eval_dir, runs, data, difficulties, _ = demo_outputs
    two_exits = demo_summary.plot_exit_grid(tmp_path / "two.png", runs[0]["records"], 3, difficulties, data)
    three_exits = demo_summary.plot_exit_grid(tmp_path / "three.png", runs[1]["records"], 3, difficulties, data)
    row_height = three_exits.height - two_exits.height
    assert row_height > 96 and two_exits.height == pytest.approx(2 * row_height, abs=10)
    assert two_exits.width == three_exits.width >= demo_summary.GRID_IMAGES_PER_EXIT * 96
    with pytest.raises(ValueError):
        demo_summary.plot_exit_grid(tmp_path / "none.png", [], 3)
