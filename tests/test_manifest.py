"""Hand-edited manifests, thresholds files and MindIR files: each problem is a ManifestError naming
the file and the field, raised before any image is classified."""
import copy
import re
import shutil

import mindspore as ms
import pytest
import yaml

import dvt_ms
from dvt_ms.contract.digest import model_digest
from dvt_ms.contract.manifest import MANIFEST_NAME, load_manifest
from dvt_ms.contract.preprocessing import preprocess_record
from dvt_ms.contract.thresholds import dump_thresholds, load_thresholds
from dvt_ms.deploy import __main__ as deploy_cli
from dvt_ms.deploy.engine import EarlyExitEngine
from dvt_ms.errors import ManifestError
from dvt_ms.export.writer import export_model

MODEL = "dvt_deit_small"
TINY = dict(embed_dim=16, depth=1, num_heads=2, mlp_ratio=1.0, num_classes=3, img_size=32, patch_grids=[2, 4])


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny two-exit model exported with calibrated thresholds and a budget table."""
    out = tmp_path_factory.mktemp("manifest") / "mindir"
    model = dvt_ms.create_model(MODEL, **TINY)
    thresholds = {"model": MODEL, "exit_thresholds": [0.5, -1e8], "digest": model_digest(model),
                  "budgets": [{"budget_index": 1, "exit_thresholds": [0.5, -1e8], "calibration_gflops": 0.001,
                               "calibration_accuracy": 40.0}]}
    export_model(model, out, MODEL, preprocess_record(32, 0.875, "bicubic"), class_names=["a", "b", "c"],
                 thresholds=thresholds)
    return out


def _copy_with(exported, tmp_path, edit=None, text=None):
    """A copy of the exported directory whose manifest is ``edit``ed (a function of the dict) or
    replaced by ``text``."""
    target = tmp_path / "edited"
    shutil.copytree(exported, target)
    manifest_path = target / MANIFEST_NAME
    manifest_path.chmod(0o644)
    if text is None:
        manifest = yaml.safe_load(manifest_path.read_text())
        edit(manifest)
        text = yaml.safe_dump(manifest, sort_keys=False)
    manifest_path.write_text(text)
    return target


def _set(path, value):
    """An edit setting the manifest field at ``path`` (keys and list indices) to ``value``."""
    def edit(manifest):
        node = manifest
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    return edit


def _delete(key):
    def edit(manifest):
        del manifest[key]
    return edit


HAND_EDITS = {
    "no exits": (_delete("exits"), "exits is missing (one per exit)"),
    "img_size banana": (_set(["preprocess", "img_size"], "banana"),
                        "preprocess.img_size must be an integer, got 'banana' (str)"),
    "crop_pct 0": (_set(["preprocess", "crop_pct"], 0), "preprocess.crop_pct must be > 0.0, got 0.0"),
    "text thresholds": (_set(["thresholds", "exit_thresholds"], ["0.5", "-1e8"]),
                        "thresholds.exit_thresholds must be a non-empty list of numbers, got ['0.5', '-1e8']"),
    "text gflops": (_set(["exits", 1, "stage_gflops"], "0.002"),
                    "exits[1].stage_gflops must be a number (written as one, not quoted), got '0.002' (str)"),
    "gflops that do not add up": (_set(["exits", 1, "cumulative_gflops"], 1.0),
                                  "exits[1].cumulative_gflops 1.0 is not the previous exit's"),
    "mean of one value": (_set(["preprocess", "mean"], [0.5]), "preprocess.mean must have 3 items, got 1: [0.5]"),
    "mean on the 0-255 scale": (_set(["preprocess", "mean"], [123.675, 116.28, 103.53]),
                                "preprocess.mean must be <= 1.0, got (123.675, 116.28, 103.53)"),
    "zero std": (_set(["preprocess", "std"], [0.2, 0, 0.2]), "preprocess.std must be > 0.0, got (0.2, 0.0, 0.2)"),
    "num_exits 7": (_set(["num_exits"], 7), "exits must have 7 items, got 2"),
    "interpolation lanczos9": (_set(["preprocess", "interpolation"], "lanczos9"),
                               "preprocess.interpolation must be one of bilinear, bicubic, nearest, area, "
                               "got 'lanczos9'"),
    "resize without crop_pct": (_set(["preprocess", "resize"], 40),
                                "preprocess.resize 40 does not follow from img_size 32 and crop_pct 0.875"),
    "unknown preprocess key": (_set(["preprocess", "antialias"], True), "preprocess: unknown key 'antialias'"),
    "misspelt exit key": (lambda m: m["exits"][0].update(stage_gflop=m["exits"][0].pop("stage_gflops")),
                          "exits[0]: unknown key 'stage_gflop'; did you mean 'stage_gflops'?"),
    "class names of another model": (_set(["class_names"], ["a", "b"]),
                                     "class_names must have 3 items, got 2: ['a', 'b']"),
    "file outside the directory": (_set(["exits", 0, "file"], "../exit1.mindir"),
                                   "exits[0].file must be a file name in the exported directory, "
                                   "got '../exit1.mindir'"),
    "images of another size": (_set(["exits", 1, "inputs", 0, "shape"], [-1, 3, 64, 64]),
                               "exits[1].inputs[0].shape must be [-1, 3, 32, 32], got [-1, 3, 64, 64]"),
    "reuse input dropped": (lambda m: m["exits"][1]["inputs"].pop(),
                            "exits[1].inputs must take, after images, what the previous exit passes on"),
    "text budget cost": (_set(["thresholds", "budgets", 0, "calibration_gflops"], "cheap"),
                         "thresholds.budgets[0].calibration_gflops must be a number (written as one, not quoted), "
                         "got 'cheap' (str)"),
    "precision float8": (_set(["precision"], "float8"),
                         "precision must be one of float32, float16, bfloat16, got 'float8'"),
    "another format": (_set(["format"], "dvt-ms-mindir/0"), "not a dvt-ms-mindir/1 manifest (format: dvt-ms-mindir/0)"),
    "digest of another kind": (_set(["digest", "weights"], "md5:0123"),
                               "digest.weights must be 'sha256:<hex>', got 'md5:0123'"),
}


@pytest.mark.parametrize("case", sorted(HAND_EDITS))
def test_hand_edited_manifest_names_the_field(exported, tmp_path, case):
    edit, message = HAND_EDITS[case]
    target = _copy_with(exported, tmp_path, edit)
    with pytest.raises(ManifestError) as caught:
        load_manifest(target)
    assert str(caught.value).startswith(f"{target / MANIFEST_NAME}:")
    assert message in str(caught.value)


def test_every_problem_of_a_manifest_is_listed_at_once_one_per_line(exported, tmp_path):
    edits = [HAND_EDITS[case] for case in ("img_size banana", "text gflops", "misspelt exit key", "text thresholds")]

    def edit_all(manifest):
        for edit, _ in edits:
            edit(manifest)
    target = _copy_with(exported, tmp_path, edit_all)
    with pytest.raises(ManifestError) as caught:
        load_manifest(target)
    lines = str(caught.value).splitlines()
    # the misspelt key also leaves its right spelling missing
    messages = [message for _, message in edits] + ["exits[0].stage_gflops is missing"]
    assert lines[0] == f"{target / MANIFEST_NAME}:" and len(lines) == 1 + len(messages), lines
    assert all(sum(message in line for line in lines[1:]) == 1 for message in messages), lines


def test_manifest_that_is_not_yaml_names_the_line(exported, tmp_path):
    target = _copy_with(exported, tmp_path, text="format: dvt-ms-mindir/1\nexits: [unclosed\n")
    with pytest.raises(ManifestError, match=r"manifest.yaml: not valid YAML: .*\(line 3, column 1\)"):
        load_manifest(target)


def test_exported_manifest_passes_its_own_checks(exported, tmp_path):
    manifest = load_manifest(exported)
    assert manifest["num_exits"] == 2 and manifest["preprocess"]["resize"] == 37
    assert manifest["precision"] == "float32"
    older = _copy_with(exported, tmp_path, _delete("precision"))     # written before precision existed
    assert "precision" not in load_manifest(older)


def test_thresholds_file_is_checked_field_by_field(exported, tmp_path):
    manifest = load_manifest(exported)
    good = copy.deepcopy(manifest["thresholds"])
    cases = {"exit_thresholds must be a non-empty list of numbers, got [0.5, 'last']":
                 {"exit_thresholds": [0.5, "last"]},
             "budgets[0].calibration_accuracy is missing": {"budgets": [{"exit_thresholds": [0.5, -1e8],
                                                                         "calibration_gflops": 0.001}]},
             "budgets[0]: unknown key 'calibration_acuracy'; did you mean 'calibration_accuracy'?":
                 {"budgets": [{"exit_thresholds": [0.5, -1e8], "calibration_gflops": 0.001,
                               "calibration_accuracy": 40.0, "calibration_acuracy": 40.0}]}}
    for message, change in cases.items():
        path = tmp_path / "thresholds.yaml"
        path.write_text(yaml.safe_dump({**good, **change}))
        with pytest.raises(ManifestError, match="^" + re.escape(f"{path}: {message}")):
            load_thresholds(str(path), manifest, "the export")


@pytest.mark.parametrize("damage", ["truncated", "empty"])
def test_damaged_mindir_is_named_with_its_path(exported, tmp_path, damage):
    target = _copy_with(exported, tmp_path, lambda manifest: None)
    mindir = target / "exit2.mindir"
    mindir.chmod(0o644)
    data = mindir.read_bytes()
    mindir.write_bytes(data[:len(data) // 2] if damage == "truncated" else b"")
    message = f"{mindir}: cannot load this MindIR file (truncated or corrupt?)"
    with pytest.raises(ManifestError, match="^" + re.escape(message)):
        EarlyExitEngine(str(target))


def test_mindir_of_another_exit_is_named_before_any_image(exported, tmp_path):
    target = _copy_with(exported, tmp_path, lambda manifest: None)
    (target / "exit2.mindir").chmod(0o644)
    shutil.copyfile(exported / "exit1.mindir", target / "exit2.mindir")
    engine = EarlyExitEngine(str(target))
    message = f"{target / 'exit2.mindir'}: the graph does not take the inputs"
    with pytest.raises(ManifestError, match="^" + re.escape(message)):
        engine.warm_up()


def test_cli_reports_a_bad_manifest_in_one_line_and_writes_nothing(exported, tmp_path, capfd,
                                                                   make_class_folders):
    make_class_folders(tmp_path / "images", num_classes=3, per_class=1)
    results = tmp_path / "results.csv"
    for case in ("img_size banana", "text thresholds"):
        edit, message = HAND_EDITS[case]
        target = _copy_with(exported, tmp_path / case.replace(" ", "_"), edit)
        assert deploy_cli.main(["--model", str(target), str(tmp_path / "images"), "--out", str(results)]) == 2
        err = capfd.readouterr().err
        assert err.count("\n") == 1 and err.startswith("error: ") and message in err, err
        assert not results.exists()


def test_export_to_a_path_with_a_space_and_non_ascii_characters_loads(tmp_path):
    """MindSpore's exporter refuses such names; the export writes through a safe name instead."""
    out = tmp_path / "my models" / "modèle 模型"
    export_model(dvt_ms.create_model(MODEL, **TINY), out, MODEL, preprocess_record(32, 0.875, "bicubic"),
                 class_names=["a", "b", "c"])
    assert sorted(p.name for p in out.iterdir()) == ["exit1.mindir", "exit2.mindir", MANIFEST_NAME]
    assert EarlyExitEngine(str(out), max_batch=1).num_exits == 2


def test_thresholds_of_another_run_are_refused_by_export_and_inference(exported, tmp_path, capfd,
                                                                        make_class_folders):
    """Thresholds calibrated on one run's weights, against another run of the same preset and
    architecture: export and inference refuse them in one line naming both digests, unless told."""
    ours = load_manifest(exported)["thresholds"]
    other_run = dvt_ms.create_model(MODEL, **TINY)
    first = next(iter(other_run.get_parameters()))
    first.set_data(ms.Tensor(first.asnumpy() + 0.01))        # weights of another training run
    theirs = model_digest(other_run)
    assert theirs["architecture"] == ours["digest"]["architecture"] and theirs["weights"] != ours["digest"]["weights"]
    source = str(tmp_path / "run_a" / "thresholds.yaml")
    other_export = tmp_path / "run_b"
    with pytest.raises(ManifestError) as caught:
        export_model(other_run, other_export, MODEL, preprocess_record(32, 0.875, "bicubic"), thresholds=ours,
                     thresholds_source=source)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"{source} was calibrated with weights "
                                                      f"{ours['digest']['weights'][:19]}")
    assert theirs["weights"][:19] in message and "--accept_thresholds_mismatch" in message
    assert not other_export.exists()
    export_model(other_run, other_export, MODEL, preprocess_record(32, 0.875, "bicubic"), thresholds=ours,
                 thresholds_source=source, accept_thresholds_mismatch=True)
    assert load_manifest(other_export)["digest"] == theirs

    thresholds_file = tmp_path / "thresholds.yaml"
    make_class_folders(tmp_path / "images", num_classes=3, per_class=1)
    legacy_file = tmp_path / "legacy.yaml"
    legacy_file.write_text(dump_thresholds({key: value for key, value in ours.items() if key != "digest"}))
    thresholds_file.write_text(dump_thresholds(ours))
    capfd.readouterr()
    for path, message in ((thresholds_file, f"{thresholds_file} was calibrated with weights"),
                          (legacy_file, f"{legacy_file} records no digest")):
        args = ["--model", str(other_export), "--thresholds", str(path), str(tmp_path / "images")]
        assert deploy_cli.main(args) == 2
        err = capfd.readouterr().err
        assert err.count("\n") == 1 and message in err and str(other_export / MANIFEST_NAME) in err, err
    assert deploy_cli.main(args + ["--accept_thresholds_mismatch", "--device_target", "CPU"]) == 0
    assert capfd.readouterr().out.count(" of 2)\n") == 3      # the three answers, printed
