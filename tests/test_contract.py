"""The export/deploy contract (dvt_ms.contract): the one selection rule, thresholds documents
(the published table, YAML without aliases), the digest, and its place on the lowest floor."""
import ast
import pathlib

import numpy as np
import pytest
import yaml

from dvt_ms.calibrate import search
from dvt_ms.calibrate.report import calibrate, write_report
from dvt_ms.contract import digest, exit_rule
from dvt_ms.contract.thresholds import (THRESHOLDS_NAME, choose_thresholds, dump_thresholds, select_row,
                                        thresholds_from_published)
from dvt_ms.errors import ManifestError

CONTRACT = pathlib.Path(digest.__file__).parent
# (calibration GFLOPs, calibration accuracy) of a small budget table
TABLE = [(1.0, 70.0), (2.0, 75.0), (3.0, 75.0), (4.0, 74.0)]


def _rows(table=TABLE):
    return [{"budget_index": index + 1, "exit_thresholds": [0.1 * index, float(exit_rule.ALWAYS)],
             "calibration_gflops": gflops, "calibration_accuracy": accuracy}
            for index, (gflops, accuracy) in enumerate(table)]


def test_contract_imports_numpy_yaml_the_standard_library_and_the_schema_only():
    allowed = {"numpy", "yaml", "dataclasses", "hashlib", "json", "logging", "math", "os"}
    for path in CONTRACT.glob("*.py"):
        tree = ast.parse(path.read_text())
        absolute = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                    for alias in node.names}
        absolute |= {node.module.split(".")[0] for node in ast.walk(tree)
                     if isinstance(node, ast.ImportFrom) and not node.level}
        relative = {(node.level, node.module) for node in ast.walk(tree)
                    if isinstance(node, ast.ImportFrom) and node.level}
        assert absolute <= allowed, (path.name, absolute - allowed)
        # within the contract, the user-error classes, or the pure-Python schema
        assert all(level == 1 or module in ("errors", "schema") for level, module in relative), (path.name, relative)


def test_default_setting_is_the_best_accuracy_cheapest_among_equals():
    assert select_row(_rows())["budget_index"] == 2


@pytest.mark.parametrize("budget, expected", [(1.0, 1), (1.5, 1), (2.0, 2), (3.5, 2), (100.0, 2)])
def test_budget_picks_the_most_accurate_row_whose_calibration_cost_fits(budget, expected):
    assert select_row(_rows(), budget_gflops=budget)["budget_index"] == expected


@pytest.mark.parametrize("accuracy, expected", [(0.0, 1), (70.0, 1), (72.0, 2), (74.5, 2), (75.0, 2)])
def test_target_accuracy_picks_the_cheapest_row_reaching_it(accuracy, expected):
    assert select_row(_rows(), target_accuracy=accuracy)["budget_index"] == expected


def test_unmet_targets_name_the_attainable_range():
    with pytest.raises(ManifestError, match=r"budget 0.5 GFLOPs is below the cheapest calibrated setting in T "
                                            r"\(1.0000 GFLOPs per image on the calibration images\)"):
        select_row(_rows(), budget_gflops=0.5, source="T")
    with pytest.raises(ManifestError, match=r"target accuracy 76.0% is above every calibrated setting in T "
                                            r"\(at most 75.00%"):
        select_row(_rows(), target_accuracy=76.0, source="T")
    for bad in (float("nan"), float("inf"), 0.0, -1.0):
        with pytest.raises(ManifestError, match=f"budget must be a positive number of GFLOPs per image, got {bad}"):
            select_row(_rows(), budget_gflops=bad)
    with pytest.raises(ManifestError, match="target accuracy must be a finite top-1 percentage, got nan"):
        select_row(_rows(), target_accuracy=float("nan"))
    with pytest.raises(ManifestError, match="T has no budget table"):
        choose_thresholds({"exit_thresholds": [0.5, -1e8]}, "T", budget_gflops=1.0)


def test_the_selection_follows_the_pareto_front_of_the_golden_curve(golden_dir):
    """On the published search's golden curve: whatever the budget, no row fitting it is more
    accurate than the one chosen, and none as accurate is cheaper."""
    with np.load(golden_dir / "thresholds.npz") as data:
        curve = search.budget_curve(data["probs"], data["targets"], data["flops"])
    rows = [{"budget_index": point["budget_index"], "exit_thresholds": point["thresholds"].tolist(),
             "calibration_gflops": point["gflops"], "calibration_accuracy": point["accuracy"]} for point in curve]
    for budget in np.linspace(min(r["calibration_gflops"] for r in rows), 3.0, 17):
        chosen = select_row(rows, budget_gflops=budget)
        assert chosen["calibration_gflops"] <= budget
        for row in rows:
            if row["calibration_gflops"] <= budget:
                assert row["calibration_accuracy"] <= chosen["calibration_accuracy"]
                if row["calibration_accuracy"] == chosen["calibration_accuracy"]:
                    assert row["calibration_gflops"] >= chosen["calibration_gflops"]


def test_thresholds_yaml_has_no_aliases_so_editing_the_default_edits_one_row(golden_dir, tmp_path):
    with np.load(golden_dir / "thresholds.npz") as data:
        probs, targets, flops = data["probs"], data["targets"], data["flops"]
    rows = calibrate(probs, targets, probs, targets, flops.tolist())
    per_exit = [{"stage_gflops": g, "cumulative_gflops": g} for g in flops.tolist()]
    accuracy = search.anytime_accuracy(probs, targets)
    fake_digest = {"architecture": "sha256:" + "a" * 64, "weights": "sha256:" + "b" * 64}
    _, document = write_report(tmp_path / "report", "dvt_deit_small", per_exit, accuracy, accuracy, rows,
                               fake_digest)
    text = (tmp_path / "report" / THRESHOLDS_NAME).read_text()
    assert "&id" not in text and "*id" not in text
    loaded = yaml.safe_load(text)
    assert loaded == document and loaded["digest"] == fake_digest
    default = loaded["default_budget_index"] - 1
    assert loaded["exit_thresholds"] == loaded["budgets"][default]["exit_thresholds"]
    loaded["exit_thresholds"][0] = 0.123
    assert loaded["budgets"][default]["exit_thresholds"][0] != 0.123


def test_published_table_with_figures_for_every_row_has_a_budget_table():
    table = [[0.9 - 0.01 * p, 0.5, 0.0] for p in range(59)]
    figures = [[1.0 + 0.1 * p for p in range(59)], [70.0 + min(p, 30) * 0.2 for p in range(59)]]
    results = {"model": "dvt_deit_small", "flops": [1.0, 3.0, 6.0], "dynamic_threshold": table,
               "budgeted_batch_classification": figures, "digest": None}
    document = thresholds_from_published(results, "X.published.yaml")
    assert [row["exit_thresholds"][:2] for row in document["budgets"]] == [row[:2] for row in table]
    assert all(row["exit_thresholds"][2] == float(exit_rule.ALWAYS) for row in document["budgets"])
    # accuracy stops growing at p = 31: the default is the cheapest of the best
    assert document["default_budget_index"] == 31
    assert choose_thresholds(document, "X", budget_gflops=2.05)[1]["budget_index"] == 11


def test_weights_digest_depends_on_every_value_and_not_on_order():
    arrays = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(3, np.float32)}
    base = digest.weights_digest(arrays.items())
    assert base == digest.weights_digest(reversed(list(arrays.items())))
    changed = dict(arrays, a=arrays["a"].copy())
    changed["a"][1, 2] = np.nextafter(changed["a"][1, 2], np.float32(10))
    assert digest.weights_digest(changed.items()) != base
    assert digest.weights_digest({"a": arrays["a"].reshape(3, 2), "b": arrays["b"]}.items()) != base
    architecture = {"embed_dim": 384, "depth": 12, "patch_grids": (7, 10, 14), "drop_path_rate": 0.1}
    assert digest.architecture_digest(architecture) == digest.architecture_digest({**architecture,
                                                                                   "drop_path_rate": 0.0})
    assert digest.architecture_digest(architecture) != digest.architecture_digest({**architecture, "depth": 11})


def test_exit_rule_first_accepting_exit_answers_and_the_last_always_does():
    confidence = np.float32([[0.9, 0.2, 0.5], [0.1, 0.8, 0.5], [0.0, 0.0, 0.0]])
    np.testing.assert_array_equal(exit_rule.exit_indices(confidence, [0.5, 0.7, 0.99]), [0, 1, 0])
    np.testing.assert_array_equal(exit_rule.exit_indices(confidence, [0.95, 0.9, 0.99]), [2, 2, 2])
    assert exit_rule.accepts(np.float32([0.0]), 0.99, is_last=True).all()
