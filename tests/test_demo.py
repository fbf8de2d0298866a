"""The demo pipeline end to end at a reduced size, through the same script a newcomer runs."""
import json
import os
import subprocess

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    env = dict(os.environ, DVT_DEMO_TRAIN_PER_CLASS="12", DVT_DEMO_CALIB_PER_CLASS="6",
               DVT_DEMO_VAL_PER_CLASS="8")
    result = subprocess.run(
        ["bash", os.path.join(REPO, "scripts", "run_demo.sh"), str(out),
         "epochs=1", "warmup_epochs=0", "embed_dim=32", "depth=2", "batch_size=16", "log_every_steps=2"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out, result.stdout


def test_demo_writes_its_outputs(demo_run):
    out, stdout = demo_run
    for name in ("summary.md", "summary.json", "budget_curve.png", "exits_grid.png", "mindir/manifest.yaml",
                 "eval/thresholds.yaml", "train/best.ckpt"):
        assert (out / name).is_file(), name
    assert "| exit | validation top-1 (%) |" in stdout
    for picture in ("budget_curve.png", "exits_grid.png"):
        with Image.open(out / picture) as image:
            assert image.format == "PNG" and min(image.size) > 100


def test_engine_agrees_with_offline_evaluation(demo_run):
    """At the thresholds the engine used, the calibration report's offline simulation (every exit
    run on every validation image, then adaptive.evaluate) gives the same accuracy and exit shares."""
    out, _ = demo_run
    rows = json.loads((out / "eval" / "budget_curve.json").read_text())
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["budgets"]) == 3
    for path in sorted((out / "infer").glob("summary_*.json")):
        engine = json.loads(path.read_text())
        offline = next(r for r in rows if r["exit_thresholds"] == engine["exit_thresholds"])
        assert engine["accuracy"] == pytest.approx(offline["validation_accuracy"], abs=1e-9)
        np.testing.assert_allclose(engine["exit_shares"], offline["validation_exit_shares"], atol=1e-12)
        assert engine["images"] == 8 * 8 and not engine["skipped"]
        assert engine["measured_speedup"] > 0   # the demo times the engine against every exit (--compare)


def test_summary_headline_is_one_of_the_engine_runs_with_its_cost_from_the_exit_shares(demo_run):
    out, stdout = demo_run
    summary = json.loads((out / "summary.json").read_text())
    headline = summary["headline_budget"]
    assert headline in summary["budgets"]
    cumulative = [e["cumulative_gflops"] for e in summary["per_exit"]]
    assert headline["expected_gflops"] == pytest.approx(float(np.dot(headline["exit_shares"], cumulative)))
    assert headline["share_of_last_exit_gflops"] == pytest.approx(headline["expected_gflops"] / cumulative[-1])
    assert len(summary["mean_difficulty_by_exit"]) == len(cumulative)
    assert f"DVT at {headline['budget_gflops']:.4f} GFLOPs" in stdout
