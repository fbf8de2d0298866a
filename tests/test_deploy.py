"""Export and early-exit inference: MindIR equals the Cells, the engine equals the offline
simulation, and deployment runs without the training side."""
import copy
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import mindspore as ms
import pytest
import yaml
from mindspore import nn

from PIL import Image

from dvt_ms.calibrate import search
from dvt_ms.contract.digest import model_digest
from dvt_ms.contract.exit_rule import ALWAYS, NEVER, softmax
from dvt_ms.contract.manifest import MANIFEST_NAME, load_manifest
from dvt_ms.contract.preprocessing import preprocess_record
from dvt_ms.contract.signature import exit_signature
from dvt_ms.contract.thresholds import load_thresholds
from dvt_ms.convert import load_torch_checkpoint, published_results_path
from dvt_ms.deploy import Classifier
from dvt_ms.deploy.controller import BudgetController
from dvt_ms.deploy.deadline import DeadlinePolicy, measure_exit_seconds
from dvt_ms.deploy.engine import EarlyExitEngine, EarlyExitRun, bucket_sizes
from dvt_ms.deploy.infer import collect_images, run_inference
from dvt_ms.deploy.preprocess import Preprocessor
from dvt_ms.errors import InferenceError
from dvt_ms.export.writer import export_model
from helpers import GOLDEN_MODELS, converted_golden_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PREPROCESS = preprocess_record(224, 0.875, "bicubic")
NUM_IMAGES = 12


@pytest.fixture(scope="module", params=sorted(GOLDEN_MODELS))
def exported(request, golden_dir, tmp_path_factory):
    family = request.param
    work = tmp_path_factory.mktemp(f"deploy-{family}")
    model, ckpt = converted_golden_model(golden_dir, family, work)
    out = work / "mindir"
    exit_thresholds = [0.2, 0.25, float(ALWAYS)]
    thresholds = {"model": GOLDEN_MODELS[family], "exit_thresholds": exit_thresholds, "digest": model_digest(model),
                  "budgets": [{"budget_index": 1, "exit_thresholds": exit_thresholds,
                               "calibration_gflops": 0.02, "calibration_accuracy": 50.0}]}
    export_model(model, out, GOLDEN_MODELS[family], PREPROCESS, class_names=[f"c{i}" for i in range(10)],
                 thresholds=thresholds)
    return family, model, out, ckpt


@pytest.fixture(scope="module")
def engine(exported):
    """The exported model's engine, shared by the tests of a family: every new batch shape costs a
    compilation, and batches of at most 4 keep them few."""
    return EarlyExitEngine(str(exported[2]), max_batch=4)


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory, make_class_folders):
    """Labelled class folders of images of assorted sizes."""
    root = tmp_path_factory.mktemp("images")
    make_class_folders(root, num_classes=3, per_class=NUM_IMAGES // 3, size=(200, 300))
    return root


def _offline(model, images):
    """Every exit on every image with the Cells: (K, N, C) softmax scores."""
    return np.stack([softmax(t.asnumpy()) for t in model(ms.Tensor(images))])


def _preprocessed(manifest, folder):
    paths, labels, _ = collect_images([str(folder)])
    preprocess = Preprocessor(manifest["preprocess"])
    return paths, labels, np.stack([preprocess(p) for p in paths])


def test_mindir_equals_cells_for_every_exit(exported, golden_dir):
    family, model, out, _ = exported
    manifest = load_manifest(out)
    images = ms.Tensor(np.load(golden_dir / f"{family}.npz")["images"])
    reused = ()
    for k, info in enumerate(manifest["exits"]):
        assert info == {**info, **exit_signature(model.config, k)}
        graph = nn.GraphCell(ms.load(str(out / info["file"])))
        outputs = graph(images, *reused)
        logits, feature, relations = model.stages[k](images, *(reused or (None, None)))
        np.testing.assert_allclose(outputs[0].asnumpy(), logits.asnumpy(), atol=1e-5)
        if k + 1 < model.config.num_exits:
            np.testing.assert_allclose(outputs[1].asnumpy(), feature.asnumpy(), atol=1e-5)
            np.testing.assert_allclose(outputs[2].asnumpy(), relations.asnumpy(), atol=1e-4)
        # dynamic batch: a single image gives that image's row
        single = graph(images[:1], *[t[:1] for t in reused])
        np.testing.assert_allclose(single[0].asnumpy(), logits.asnumpy()[:1], atol=1e-5)
        reused = tuple(outputs[1:])


def _midpoint_thresholds(probs):
    """Thresholds half-way between two neighbouring confidences, so that float rounding of a
    different batch composition cannot move an image across one."""
    thresholds = []
    for k in range(probs.shape[0] - 1):
        conf = np.sort(probs[k].max(axis=1))
        middle = len(conf) // 2
        thresholds.append(float((conf[middle - 1] + conf[middle]) / 2))
    return thresholds + [float(ALWAYS)]


@pytest.mark.parametrize("case", ["calibrated", "all_at_exit_1", "none_before_last"])
def test_engine_equals_offline_simulation(exported, engine, image_folder, case):
    family, model, out, _ = exported
    _, _, images = _preprocessed(engine.manifest, image_folder)
    probs = _offline(model, images)
    thresholds = {"calibrated": _midpoint_thresholds(probs),
                  "all_at_exit_1": [float(ALWAYS)] * 3,
                  "none_before_last": [float(NEVER)] * 2 + [float(ALWAYS)]}[case]
    exits, predictions, confidences = engine.classify(images, thresholds)
    expected_exits, expected_predictions = search.assign_exits(probs, np.float32(thresholds))
    np.testing.assert_array_equal(exits, expected_exits)
    np.testing.assert_array_equal(predictions, expected_predictions)
    np.testing.assert_allclose(confidences, probs[exits, np.arange(len(exits))].max(axis=1), atol=1e-6)
    if case == "calibrated":
        assert len(set(exits.tolist())) > 1, "the thresholds should split the images across exits"
    # images pushed in uneven groups, exits run in batches of 4 (queues fill across pushes) or
    # one image at a time (streaming): the same exit and answer for every image
    for batch_size in (4, 1):
        run = engine.run(thresholds, batch_size)
        for start, stop in ((0, 3), (3, 4), (4, 11), (11, len(images))):
            run.push(images[start:stop])
            if batch_size == 1:
                assert run.answered == stop
        run.finish()
        streamed_exits, streamed_predictions, _ = run.results()
        np.testing.assert_array_equal(streamed_exits, expected_exits)
        np.testing.assert_array_equal(streamed_predictions, expected_predictions)


class _Buckets:
    """What EarlyExitRun needs of an engine to decide its call sizes."""
    num_exits = 2

    def __init__(self, max_batch):
        self.buckets = bucket_sizes(max_batch)

    def bucket(self, count):
        return next(b for b in self.buckets if b >= count)


@pytest.mark.parametrize("max_batch", [32, 24, 1])
def test_partial_batches_pad_at_most_a_quarter_of_a_call(max_batch):
    engine = _Buckets(max_batch)
    run = EarlyExitRun(engine, [0.5, -1e8], max_batch)
    for waiting in range(1, 3 * max_batch):
        calls, left = [], waiting
        while left:
            calls.append(run._call_size(left))
            left -= calls[-1]
        assert all(size >= 1 for size in calls) and sum(calls) == waiting
        for size in calls:
            padding = engine.bucket(size) - size
            assert size <= max_batch and padding <= engine.bucket(size) // 4, (waiting, calls)
        assert calls[:waiting // max_batch] == [max_batch] * (waiting // max_batch)   # full batches first
    if max_batch == 32:   # 26 -> 32 pads 6 (<= 8); 10 -> 16 would pad 6 (> 4): 8, then 2
        assert [run._call_size(n) for n in (26, 10, 5, 31)] == [26, 8, 4, 31]


def test_every_exit_gives_the_cells_logits(exported, engine, image_folder):
    family, model, out, _ = exported
    _, _, images = _preprocessed(engine.manifest, image_folder)
    expected = np.stack([t.asnumpy() for t in model(ms.Tensor(images))])
    np.testing.assert_allclose(engine.every_exit(images), expected, atol=1e-4)      # in batches of 4


def test_bad_image_is_skipped_and_reported(engine, image_folder, tmp_path):
    paths, labels, _ = collect_images([str(image_folder)])
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    all_paths = paths[:3] + [str(bad)] + paths[3:]
    all_labels = np.concatenate([labels[:3], [0], labels[3:]])
    thresholds = engine.manifest["thresholds"]["exit_thresholds"]
    records, summary = run_inference(engine, all_paths, all_labels, thresholds, batch_size=4)
    assert [s["path"] for s in summary["skipped"]] == [str(bad)]
    assert "truncated" in summary["skipped"][0]["error"].lower()
    assert [r["path"] for r in records] == paths
    reference, _ = run_inference(engine, paths, labels, thresholds, batch_size=2, compare_all_exits=False)
    assert [(r["exit"], r["class_index"]) for r in records] == [(r["exit"], r["class_index"]) for r in reference]
    assert summary["accuracy"] == pytest.approx(100 * np.mean([r["correct"] for r in records]))
    assert sum(summary["exit_shares"]) == pytest.approx(1.0)


def test_edited_normalisation_in_the_manifest_changes_the_answers(exported, engine, image_folder, tmp_path):
    """The manifest's mean/std drive inference: edited, the confidences follow them exactly."""
    _, model, out, _ = exported
    edited_dir = tmp_path / "edited"
    edited_dir.mkdir()
    for name in os.listdir(out):
        (edited_dir / name).write_bytes((out / name).read_bytes())
    manifest = yaml.safe_load((out / MANIFEST_NAME).read_text())
    manifest["preprocess"].update(mean=[0.3, 0.3, 0.3], std=[0.4, 0.5, 0.6])
    (edited_dir / MANIFEST_NAME).write_text(yaml.safe_dump(manifest))
    edited_engine = copy.copy(engine)            # the same compiled graphs, the edited manifest
    edited_engine.manifest = load_manifest(edited_dir)
    paths, labels, _ = collect_images([str(image_folder)])
    thresholds = [float(ALWAYS)] * 3                          # everything answered at exit 1
    original, _ = run_inference(engine, paths, labels, thresholds, batch_size=4, compare_all_exits=False)
    edited, _ = run_inference(edited_engine, paths, labels, thresholds, batch_size=4, compare_all_exits=False)
    _, _, images = _preprocessed(edited_engine.manifest, image_folder)
    expected = _offline(model, images)[0].max(axis=1)
    np.testing.assert_allclose([r["confidence"] for r in edited], expected, atol=1e-5)
    assert max(abs(a["confidence"] - b["confidence"]) for a, b in zip(original, edited)) > 1e-3


@pytest.mark.parametrize("exported", ["deit"], indirect=True)
def test_budget_controller_steers_the_engine_row_by_row(exported, engine, image_folder):
    """Streaming with a controller over a budget table made from these images' own scores: every
    image exits where the offline rule puts it under the row in force when it ran."""
    _, model, _, _ = exported
    paths, labels, images = _preprocessed(engine.manifest, image_folder)
    probs = _offline(model, images)
    rows = [{"budget_index": row["budget_index"], "exit_thresholds": [float(t) for t in row["thresholds"]],
             "calibration_gflops": row["gflops"], "calibration_accuracy": row["accuracy"]}
            for row in search.budget_curve(probs, labels, engine.cumulative_gflops)]
    start = max(rows, key=lambda row: row["calibration_gflops"])["exit_thresholds"]     # the dearest row
    controller = BudgetController(rows, engine.cumulative_gflops, start, window=8, tolerance=0.01)
    controller.target *= 0.5        # a target the dearest row overshoots: the controller must move
    records, summary = run_inference(engine, paths, labels, start, batch_size=1, compare_all_exits=False,
                                     policy=controller)
    positions, exits, _, rows_used = controller.answers()
    assert positions.tolist() == list(range(NUM_IMAGES)) and [r["exit"] - 1 for r in records] == exits.tolist()
    assert summary["policy"]["switches"] and len(set(rows_used.tolist())) > 1
    for index, row in enumerate(rows_used):
        expected, _ = search.assign_exits(probs[:, index:index + 1], controller.row_thresholds[row])
        assert exits[index] == expected[0]


@pytest.mark.parametrize("exported", ["deit"], indirect=True)
def test_deadline_policy_in_the_engine_stops_at_the_first_exit_or_follows_the_thresholds(exported, engine,
                                                                                         image_folder):
    _, model, _, _ = exported
    paths, labels, images = _preprocessed(engine.manifest, image_folder)
    probs = _offline(model, images)
    thresholds = _midpoint_thresholds(probs)
    seconds = measure_exit_seconds(engine, repeats=3, seconds=0.0)
    assert all(len(s) == 3 and min(s) > 0 for s in seconds)
    expected, _ = search.assign_exits(probs, np.float32(thresholds))
    for deadline_ms, exits in ((1e6, expected), (1e-3, np.zeros(NUM_IMAGES, np.int64))):
        policy = DeadlinePolicy(deadline_ms, thresholds, seconds)
        records, summary = run_inference(engine, paths, labels, thresholds, batch_size=1, compare_all_exits=False,
                                         policy=policy)
        assert [r["exit"] - 1 for r in records] == exits.tolist()
        result = summary["policy"]
        confident_early = np.mean(probs[0].max(axis=1) >= thresholds[0])
        by_deadline = 0.0 if deadline_ms > 1 else 1.0 - confident_early
        assert result["answered_by_deadline"] == pytest.approx(by_deadline)
        assert result["latency_ms"]["p99"] == pytest.approx(summary["latency_ms"]["model"]["p99"])


def _infer_cli(*args):
    return subprocess.run([sys.executable, "-m", "dvt_ms.deploy", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True)


@pytest.mark.slow
def test_cli_writes_results_and_summary(exported, image_folder, tmp_path):
    family, _, out, _ = exported
    result = _infer_cli("--model", out, image_folder, "--out", tmp_path / "r.csv", "--summary", tmp_path / "s.json",
                        "--compare")
    assert result.returncode == 0, result.stderr
    lines = (tmp_path / "r.csv").read_text().splitlines()
    assert lines[0].startswith("path,class_index,class,confidence,exit") and len(lines) == NUM_IMAGES + 1
    for line in lines[1:]:      # a handful of images: each answer is printed too
        path, _, name, confidence, exit_number = line.split(",")[:5]
        assert f"{path}: {name} (confidence {float(confidence):.3f}, exit {exit_number} of 3)" in result.stdout
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["predicted_speedup"] >= 1.0 and summary["measured_speedup"] > 0
    assert summary["preprocess_ms_per_image"] > 0
    assert summary["end_to_end_images_per_second"] < summary["images_per_second"]
    assert "accuracy" in result.stdout and "latency_ms" not in summary


@pytest.mark.slow
@pytest.mark.parametrize("exported", ["deit"], indirect=True)
def test_cli_holds_a_budget_and_meets_a_deadline(exported, image_folder, tmp_path):
    family, _, out, _ = exported
    result = _infer_cli("--model", out, image_folder, "--hold_budget", "0.02", "--window", "8",
                        "--summary", tmp_path / "held.json")
    assert result.returncode == 0, result.stderr
    held = json.loads((tmp_path / "held.json").read_text())["policy"]
    assert held["mode"] == "hold_budget" and held["start_row"]["calibration_gflops"] == 0.02
    assert sum(w["images"] for w in held["windows"]) == NUM_IMAGES and "budget held" in result.stdout
    result = _infer_cli("--model", out, image_folder, "--deadline_ms", "1000",
                        "--summary", tmp_path / "deadline.json")
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "deadline.json").read_text())
    assert summary["batch_size"] == 1 and summary["policy"]["deadline_ms"] == 1000
    assert summary["policy"]["answered_by_deadline"] == 0 and "deadline 1000.00 ms" in result.stdout


@pytest.mark.slow
@pytest.mark.parametrize("exported", ["deit"], indirect=True)
def test_cli_streaming_reports_latency_per_exit(exported, image_folder, tmp_path):
    family, _, out, _ = exported
    result = _infer_cli("--model", out, image_folder, "--batch_size", "1", "--summary", tmp_path / "s.json",
                        "--top_k", "3", "--out", tmp_path / "r.json")
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "s.json").read_text())
    assert "measured_speedup" not in summary and "every_exit" not in summary["latency_ms"]   # each image ran once
    for record in json.loads((tmp_path / "r.json").read_text()):
        best = [entry.split(" ") for entry in record["top_k"].split("; ")]
        assert len(best) == 3 and best[0][0] == record["class"]
        assert float(best[0][1]) == pytest.approx(record["confidence"], abs=1e-4)
        assert [float(p) for _, p in best] == sorted((float(p) for _, p in best), reverse=True)
    latency = summary["latency_ms"]
    assert 0 < latency["model"]["p50"] <= latency["model"]["p95"] < latency["end_to_end"]["p95"] + 1e-9
    counts = [row["images"] for row in latency["per_exit"]]
    assert sum(counts) == NUM_IMAGES and counts == [round(share * NUM_IMAGES) for share in summary["exit_shares"]]
    assert all(row["p50"] <= row["p95"] for row in latency["per_exit"] if row["images"])
    assert "latency per image (batch size 1)" in result.stdout


# Run in a fresh interpreter where mindcv and every part of dvt_ms but the contract and deployment cannot be
# imported.
_WITHOUT_TRAINING_SIDE = textwrap.dedent("""
    import importlib.abc, runpy, sys
    BLOCKED = ("mindcv", "dvt_ms.models", "dvt_ms.data", "dvt_ms.train", "dvt_ms.config", "dvt_ms.checkpoint",
               "dvt_ms.convert", "dvt_ms.calibrate", "dvt_ms.export", "dvt_ms.demo")

    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if any(name == b or name.startswith(b + ".") for b in BLOCKED):
                raise ImportError(f"{name} is not installed here")
            return None

    sys.meta_path.insert(0, Blocker())
    sys.argv = ["run_infer.sh"] + sys.argv[1:]
    runpy.run_module("dvt_ms.deploy", run_name="__main__", alter_sys=True)
""")


@pytest.mark.slow
@pytest.mark.parametrize("exported", ["t2t"], indirect=True)
def test_deployment_runs_without_mindcv_or_training_code(exported, image_folder, tmp_path):
    family, _, out, _ = exported
    result = subprocess.run([sys.executable, "-c", _WITHOUT_TRAINING_SIDE, "--model", str(out), str(image_folder),
                             "--out", str(tmp_path / "r.json"), "--batch_size", "4"],
                            cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    records = json.loads((tmp_path / "r.json").read_text())
    assert len(records) == NUM_IMAGES and {r["exit"] for r in records} <= {1, 2, 3}
    blocked = subprocess.run([sys.executable, "-c", _WITHOUT_TRAINING_SIDE.replace(
        'runpy.run_module("dvt_ms.deploy", run_name="__main__", alter_sys=True)', "import mindcv")],
        cwd=REPO, capture_output=True, text=True)
    assert blocked.returncode != 0 and "mindcv is not installed here" in blocked.stderr


@pytest.mark.slow
@pytest.mark.parametrize("exported", ["t2t"], indirect=True)   # the error paths do not depend on the family
def test_cli_errors_leave_no_output(exported, image_folder, tmp_path):
    family, _, out, _ = exported
    results = tmp_path / "r.json"
    wrong_exits = tmp_path / "wrong_exits.yaml"
    wrong_exits.write_text(yaml.safe_dump({"model": GOLDEN_MODELS[family], "exit_thresholds": [0.5, -1e8]}))
    wrong_model = tmp_path / "wrong_model.yaml"
    wrong_model.write_text(yaml.safe_dump({"model": "dvt_t2t_vit_14", "exit_thresholds": [0.5, 0.5, -1e8]}))
    empty = tmp_path / "empty"
    empty.mkdir()
    broken_model = tmp_path / "broken_model"
    broken_model.mkdir()
    (broken_model / MANIFEST_NAME).write_text((out / MANIFEST_NAME).read_text())
    truncated_model = tmp_path / "truncated_model"
    truncated_model.mkdir()
    for name in os.listdir(out):
        data = (out / name).read_bytes()
        (truncated_model / name).write_bytes(data[:len(data) // 3] if name == "exit3.mindir" else data)
    cases = {
        "exit_thresholds must have 3 items, got 2": ("--model", out, "--thresholds", wrong_exits, image_folder),
        f"{truncated_model / 'exit3.mindir'}: cannot load this MindIR file": ("--model", truncated_model, image_folder),
        "--batch_size must be at least 1": ("--model", out, "--batch_size", "0", image_folder),
        "got 'dvt_t2t_vit_14': thresholds of another model": ("--model", out, "--thresholds", wrong_model,
                                                               image_folder),
        "no images found": ("--model", out, empty),
        "MindIR file exit1.mindir named in manifest.yaml (exits[0].file) is missing": ("--model", broken_model,
                                                                                     image_folder),
        "below the cheapest": ("--model", out, "--budget", "0.001", image_folder),
        "above every calibrated setting": ("--model", out, "--accuracy", "99", image_folder),
        "--budget must be a positive number of GFLOPs per image, got nan": ("--model", out, "--budget", "nan", image_folder),
        "--deadline_ms streams images one at a time": ("--model", out, "--deadline_ms", "50", "--batch_size", "4",
                                                       image_folder),
        "--deadline_ms and --hold_budget do not combine": ("--model", out, "--deadline_ms", "50",
                                                           "--hold_budget", "0.02", image_folder),
    }
    for message, args in cases.items():
        result = _infer_cli(*args, "--out", results)
        assert result.returncode == 2, (message, result.stderr)
        assert message in result.stderr and result.stderr.count("\n") == 1, (message, result.stderr)
        assert not results.exists()


def test_published_table_is_a_thresholds_document_for_the_converted_weights(exported, golden_dir):
    """The converter binds the authors' dynamic_threshold table to the weights it wrote: the
    export of those weights accepts it, row for row, the last exit answering the rest."""
    family, _, out, ckpt = exported
    document = load_thresholds(published_results_path(ckpt), load_manifest(out), "the export")
    expected = np.array(load_torch_checkpoint(golden_dir / f"{family}.pth.tar")["dynamic_threshold"], np.float32)
    expected[:, -1] = ALWAYS
    # the golden checkpoints publish figures for 2 budgets only, not all 59: no budget table, and
    # the default is the last published row
    assert "budgets" not in document and document["default_budget_index"] == len(expected)
    np.testing.assert_array_equal(np.float32(document["exit_thresholds"]), expected[-1])


def test_classifier_takes_paths_pil_images_and_pixels(exported, engine, image_folder):
    family, _, out, _ = exported
    paths, labels, _ = collect_images([str(image_folder)])
    thresholds = engine.manifest["thresholds"]["exit_thresholds"]
    records, _ = run_inference(engine, paths, labels, thresholds, batch_size=4)
    classifier = Classifier(str(out), device_target="CPU", batch_size=4)
    with Image.open(paths[1]) as picture:
        images = [paths[0], picture.copy(), np.asarray(Image.open(paths[2]).convert("RGB"))] + paths[3:]
    answers = classifier.classify(images, top_k=2)
    assert [(a.class_name, a.exit) for a in answers] == [(r["class"], r["exit"]) for r in records]
    np.testing.assert_allclose([a.confidence for a in answers], [r["confidence"] for r in records], atol=1e-6)
    assert all(a.top_k[0] == (a.class_name, pytest.approx(a.confidence)) and len(a.top_k) == 2 for a in answers)
    assert classifier(paths[0]).class_name == records[0]["class"]


def test_evaluation_weights_prefer_the_ema_copy(tmp_path):
    import dvt_ms
    from dvt_ms.checkpoint import load_model_weights
    from dvt_ms.errors import CheckpointError
    overrides = dict(embed_dim=16, depth=1, num_heads=2, mlp_ratio=1.0, num_classes=3, img_size=32,
                     patch_grids=[2, 4])
    source = dvt_ms.create_model("dvt_deit_small", **overrides)
    params = [{"name": p.name, "data": p.data} for p in source.get_parameters()]
    params += [{"name": "ema." + p.name, "data": ms.Tensor(p.asnumpy() + 1.0)} for p in source.get_parameters()]
    ms.save_checkpoint(params, str(tmp_path / "train.ckpt"))
    for use_ema, offset in ((True, 1.0), (False, 0.0)):
        target = dvt_ms.create_model("dvt_deit_small", **overrides)
        assert load_model_weights(target, str(tmp_path / "train.ckpt"), use_ema=use_ema) is use_ema
        for mine, theirs in zip(target.get_parameters(), source.get_parameters()):
            np.testing.assert_array_equal(mine.asnumpy(), theirs.asnumpy() + offset)
    bigger = dvt_ms.create_model("dvt_deit_small", **{**overrides, "depth": 2})
    with pytest.raises(CheckpointError, match="lacks"):
        load_model_weights(bigger, str(tmp_path / "train.ckpt"))


def _manifest_with(stage_gflops, reuse_shape=(5, 4)):
    exits = [{"stage_gflops": g, "outputs": [{"name": "logits", "shape": [-1, 10]},
                                             {"name": "feature", "shape": [-1, *reuse_shape]}]}
             for g in stage_gflops]
    return {"exits": exits}


def test_batch_size_grows_as_the_model_shrinks_and_leaves_exit_one_at_least_two_calls():
    from dvt_ms.deploy.engine import CALL_GMACS, LARGEST_BATCH, choose_batch_size
    preset = _manifest_with([1.1429, 2.5139, 5.2315])          # DeiT-S's stages
    assert choose_batch_size(preset) == 16 and 16 * 1.1429 >= CALL_GMACS > 8 * 1.1429
    assert choose_batch_size(_manifest_with([0.4677, 0.9877, 2.0589])) == 32                # T2T-12's
    assert choose_batch_size(_manifest_with([0.001, 0.003, 0.011])) == LARGEST_BATCH   # the demo's
    assert choose_batch_size(_manifest_with([0.001, 0.003, 0.011]), num_images=1200) == 512
    assert choose_batch_size(_manifest_with([0.001, 0.003, 0.011]), num_images=300) == 256   # 150 -> 256
    assert choose_batch_size(_manifest_with([0.001, 0.003, 0.011]), num_images=256) == 128
    assert choose_batch_size(_manifest_with([0.001, 0.003, 0.011]), num_images=1) == 1
    # reuse tensors of 64 MiB per image: a batch's worth stays within REUSE_BYTES_PER_CALL (512 MiB)
    assert choose_batch_size(_manifest_with([0.001], reuse_shape=(16, 2 ** 20))) == 8


def test_running_out_of_memory_at_warm_up_names_the_exit_and_the_batch_size(exported, monkeypatch):
    engine = EarlyExitEngine(str(exported[2]), max_batch=4)
    message = ("----------------------------------------------------\n- Framework Error Message:\n"
               "----------------------------------------------------\nMemory not enough: alloc failed, kernel name: "
               "Default/Erf-op451, alloc size: 376049664B.\n- C++ Call Stack: (For framework developers)")

    def call_exit(k, images, reused):
        if k == 2 and images.shape[0] == 4:
            raise RuntimeError(message)
        return original(k, images, reused)

    original = engine.call_exit
    monkeypatch.setattr(engine, "call_exit", call_exit)
    with pytest.raises(InferenceError, match=r"exit3\.mindir: out of memory at batch size 4 \(Memory not "
                                             r"enough: alloc failed.*\).*smaller --batch_size"):
        engine.warm_up()


def test_engine_without_a_batch_size_chooses_one_for_its_inputs(exported):
    engine = EarlyExitEngine(str(exported[2]), num_images=7)
    assert engine.max_batch == 4 and engine.buckets == [1, 2, 4]


@pytest.mark.parametrize("budget", ["nan", "inf", "0", "-0.5"])
def test_a_budget_that_is_not_a_positive_number_is_refused_naming_it(budget, tmp_path, capsys):
    from dvt_ms.deploy.__main__ import main as infer_main
    code = infer_main(["--model", str(tmp_path / "no_model"), "--budget", budget, str(tmp_path)])
    error = capsys.readouterr().err
    assert code == 2 and error.count("\n") == 1
    assert f"--budget must be a positive number of GFLOPs per image, got {float(budget)}" in error


@pytest.mark.parametrize("exported", ["deit"], indirect=True)
def test_ctrl_c_during_inference_keeps_every_answer_so_far_and_exits_130(exported, image_folder, tmp_path,
                                                                        monkeypatch, capsys):
    from dvt_ms.deploy import infer
    from dvt_ms.deploy.__main__ import main
    family, _, out, _ = exported
    assert main(["--model", str(out), str(image_folder), "--batch_size", "2",
                 "--out", str(tmp_path / "all.json")]) == 0
    complete = {r["path"]: r for r in json.loads((tmp_path / "all.json").read_text())}
    calls = []

    class InterruptedAtImage9(infer.Preprocessor):
        def __call__(self, path):
            calls.append(path)
            if len(calls) == 9:
                raise KeyboardInterrupt   # what Ctrl-C raises between two images
            return super().__call__(path)

    monkeypatch.setattr(infer, "Preprocessor", InterruptedAtImage9)
    results, summary = tmp_path / "partial.json", tmp_path / "summary.json"
    results.write_text(json.dumps([complete[next(iter(complete))]]))   # an earlier run's results: replaced
    capsys.readouterr()
    assert main(["--model", str(out), str(image_folder), "--batch_size", "2",
                 "--out", str(results), "--summary", str(summary)]) == 130
    partial = json.loads(results.read_text())
    stopped = json.loads(summary.read_text())["interrupted"]
    assert 0 < len(partial) <= 8 and stopped == {"classified": len(partial), "of": NUM_IMAGES, "exit_code": 130}
    assert all(record == complete[record["path"]] for record in partial)
    assert f"interrupted: {len(partial)} of {NUM_IMAGES} images classified" in capsys.readouterr().err
