"""run_eval's report on a converted published checkpoint (the golden one) and a small image folder."""
import json
import pathlib

import numpy as np
import mindspore as ms
import pytest
import yaml

from dvt_ms.calibrate import __main__ as calibrate_cli
from dvt_ms.calibrate import search
from dvt_ms.contract.digest import model_digest
from dvt_ms.contract.exit_rule import softmax
from dvt_ms.contract.preprocessing import preprocess_record
from dvt_ms.deploy.preprocess import Preprocessor
from dvt_ms.models.flops import model_flops
from helpers import GOLDEN_MODELS, converted_golden_model, golden_overrides

NUM_CLASSES = 10
REFERENCE = pathlib.Path(__file__).resolve().parent / "reference" / "deit_report.json"


@pytest.mark.slow
def test_report_of_a_converted_published_checkpoint(golden_dir, converted_dir, tmp_path, make_class_folders):
    model, ckpt = converted_golden_model(golden_dir, "deit", converted_dir)
    make_class_folders(tmp_path / "data" / "train", NUM_CLASSES, 2, size=(240, 260), seed=1)
    val_paths, val_labels = make_class_folders(tmp_path / "data" / "val", NUM_CLASSES, 2, size=(240, 260), seed=2)
    config = {"model": GOLDEN_MODELS["deit"], **golden_overrides(golden_dir, "deit"), "dataset": "imagenet",
              "batch_size": 8, "num_workers": 1, "device_target": "CPU", "output_dir": str(tmp_path / "run")}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    out = tmp_path / "report"
    assert calibrate_cli.main([str(tmp_path / "config.yaml"), "--ckpt", str(ckpt), "--data", str(tmp_path / "data"),
                          "--out", str(out), "--calib_size", "15"]) == 0

    per_exit = json.loads((out / "per_exit.json").read_text())
    flops = model_flops(model.config)
    assert [e["cumulative_gflops"] for e in per_exit] == [f["cumulative_gflops"] for f in flops]
    # independent path: the deployment preprocessing and the Cells, then plain accuracy
    preprocess = Preprocessor(preprocess_record(224, 0.875, "bicubic"))
    images = np.stack([preprocess(str(p)) for p in val_paths])
    probs = np.stack([softmax(t.asnumpy()) for t in model(ms.Tensor(images))])
    expected_top1 = search.anytime_accuracy(probs, val_labels)
    np.testing.assert_allclose([e["validation_top1"] for e in per_exit], expected_top1)

    rows = json.loads((out / "budget_curve.json").read_text())
    assert [r["budget_index"] for r in rows] == list(search.BUDGET_INDICES)
    for row in rows[::10]:
        accuracy, gflops = search.evaluate(probs, val_labels, [f["cumulative_gflops"] for f in flops],
                                             np.float32(row["exit_thresholds"]))
        assert row["validation_accuracy"] == pytest.approx(accuracy)
        assert row["validation_gflops"] == pytest.approx(gflops)
    thresholds = yaml.safe_load((out / "thresholds.yaml").read_text())
    assert thresholds["model"] == GOLDEN_MODELS["deit"] and len(thresholds["exit_thresholds"]) == 3
    assert len(thresholds["budgets"]) == 59
    assert (out / "budget_curve.png").stat().st_size > 0 and "| budget |" in (out / "budget_curve.md").read_text()
    assert thresholds["calibration"] == {"images": 15, "source": "training images (seen in training)"}
    assert thresholds["digest"] == model_digest(model)      # bound to the weights it calibrated

    # the same report as the code that kept every exit's softmax wrote (tests/reference/README.md)
    reference = json.loads(REFERENCE.read_text())
    assert per_exit == reference["per_exit"]
    assert len(rows) == len(reference["budget_curve"])
    for row, expected in zip(rows, reference["budget_curve"]):
        assert row["exit_thresholds"] == pytest.approx(expected["exit_thresholds"], rel=1e-6)
        assert {key: value for key, value in row.items() if key != "exit_thresholds"} == \
            {key: value for key, value in expected.items() if key != "exit_thresholds"}
