"""The contract between export and deployment: ``manifest.yaml`` and the thresholds document.

``run_export.sh`` writes the manifest (format ``MANIFEST_FORMAT``, docs/deployment.md); the engine
reads only it and the MindIR files it names. A thresholds document (``thresholds.yaml`` from
calibration) holds the calibrated ``exit_thresholds`` and, optionally, the table of budgets they
were chosen from.

Everything is checked when it is loaded, before any image is classified: a hand-edited manifest
or thresholds file that cannot be used is a ``ManifestError`` naming the file and the field.
"""
import math
import os

import yaml

from ..errors import ManifestError
from .preprocess import INTERPOLATIONS, resize_for_crop

__all__ = ["MANIFEST_NAME", "MANIFEST_FORMAT", "PRECISIONS", "load_manifest", "check_manifest", "read_thresholds",
           "check_thresholds_fit", "load_thresholds", "select_budget"]

MANIFEST_NAME = "manifest.yaml"
MANIFEST_FORMAT = "dvt-ms-mindir/1"
#: Compute dtypes an export may have (``precision``; absent in older manifests: float32). Inputs
#: and outputs are float32 whatever it is, so the engine treats every precision alike.
PRECISIONS = ("float32", "float16", "bfloat16")

_MANIFEST_KEYS = ("format", "model", "architecture", "num_exits", "num_classes", "class_names", "preprocess",
                  "precision", "exits", "thresholds")
_PREPROCESS_KEYS = ("img_size", "crop_pct", "resize", "interpolation", "mean", "std")
_EXIT_KEYS = ("file", "grid", "inputs", "outputs", "stage_gflops", "cumulative_gflops")
# what exit k passes on (its outputs after the logits) -> the name exit k+1 takes it under
_REUSED_AS = {"feature": "prev_feature", "relations": "prev_relations"}


class _Fields:
    """Checks of one document's values; every failure names the document and the field."""

    def __init__(self, source):
        self.source = source

    def fail(self, field, problem):
        raise ManifestError(f"{self.source}: {field}: {problem}")

    def mapping(self, value, field, keys=None, optional=()):
        if not isinstance(value, dict):
            self.fail(field, f"expected a mapping, got {_show(value)}")
        if keys is not None:
            missing = [key for key in keys if key not in value and key not in optional]
            unknown = [key for key in value if key not in keys]
            if missing:
                self.fail(field, f"missing key(s) {', '.join(missing)}")
            if unknown:
                self.fail(field, f"unknown key(s) {', '.join(map(str, unknown))} (expected {', '.join(keys)})")
        return value

    def integer(self, value, field, minimum=1):
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            self.fail(field, f"expected an integer >= {minimum}, got {_show(value)}")
        return value

    def number(self, value, field, low=-math.inf, high=math.inf, low_open=False):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
            self.fail(field, f"expected a number, got {_show(value)}")
        if value > high or value < low or (low_open and value == low):
            self.fail(field, f"{value} is outside {'(' if low_open else '['}{low}, {high}]")
        return float(value)

    def numbers(self, value, field, length, **bounds):
        if not isinstance(value, list) or len(value) != length:
            self.fail(field, f"expected a list of {length} numbers, got {_show(value)}")
        return [self.number(item, f"{field}[{index}]", **bounds) for index, item in enumerate(value)]

    def text(self, value, field):
        if not isinstance(value, str) or not value:
            self.fail(field, f"expected a non-empty string, got {_show(value)}")
        return value


def _show(value):
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _yaml_problem(err):
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    return f"{problem} (line {mark.line + 1}, column {mark.column + 1})" if mark else problem


def _read_yaml(path, what):
    try:
        with open(path, encoding="utf-8") as handle:
            return yaml.safe_load(handle)
    except OSError as err:
        raise ManifestError(f"cannot read {what} {path}: {err.strerror}") from None
    except UnicodeDecodeError:
        raise ManifestError(f"{path}: not a text file (expected {what} YAML)") from None
    except yaml.YAMLError as err:
        raise ManifestError(f"{path}: not valid YAML: {_yaml_problem(err)}") from None


def load_manifest(model_dir):
    """The checked manifest of the exported directory ``model_dir`` (ManifestError naming the field)."""
    path = os.path.join(model_dir, MANIFEST_NAME)
    if not os.path.isfile(path):
        raise ManifestError(f"{model_dir}: no {MANIFEST_NAME} (is this a directory written by run_export.sh?)")
    manifest = _read_yaml(path, "manifest")
    check_manifest(manifest, path)
    for index, exit_info in enumerate(manifest["exits"]):
        if not os.path.isfile(os.path.join(model_dir, exit_info["file"])):
            raise ManifestError(f"{model_dir}: MindIR file {exit_info['file']} named in {MANIFEST_NAME} "
                                f"(exits[{index}].file) is missing")
    return manifest


def check_manifest(manifest, source):
    """Check every field the engine, the preprocessing and the summary use."""
    fields = _Fields(source)
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else _show(manifest)
        raise ManifestError(f"{source}: not a {MANIFEST_FORMAT} manifest (format: {found})")
    fields.mapping(manifest, "manifest", _MANIFEST_KEYS, optional=("architecture", "precision"))
    fields.text(manifest["model"], "model")
    if manifest.get("precision", "float32") not in PRECISIONS:
        fields.fail("precision", f"{_show(manifest['precision'])} is not one of {', '.join(PRECISIONS)}")
    if "architecture" in manifest:
        fields.mapping(manifest["architecture"], "architecture")
    num_exits = fields.integer(manifest["num_exits"], "num_exits")
    num_classes = fields.integer(manifest["num_classes"], "num_classes")
    names = manifest["class_names"]
    if names is not None and (not isinstance(names, list) or len(names) != num_classes
                              or not all(isinstance(name, str) for name in names)):
        fields.fail("class_names", f"expected null or a list of {num_classes} names, got {_show(names)}")
    img_size = _check_preprocess(fields, manifest["preprocess"])
    exits = manifest["exits"]
    if not isinstance(exits, list) or len(exits) != num_exits:
        fields.fail("exits", f"expected a list of num_exits = {num_exits} exits, got "
                             f"{len(exits) if isinstance(exits, list) else _show(exits)}")
    previous = None
    for index, exit_info in enumerate(exits):
        previous = _check_exit(fields, exit_info, f"exits[{index}]", img_size, num_classes, previous)
    if previous["outputs"][1:]:
        fields.fail(f"exits[{num_exits - 1}].outputs", "the last exit passes nothing on: only logits")
    if manifest["thresholds"] is not None:
        check_thresholds_fit(manifest["thresholds"], manifest["model"], num_exits, source, "thresholds.")


def _check_preprocess(fields, preprocess):
    fields.mapping(preprocess, "preprocess", _PREPROCESS_KEYS)
    img_size = fields.integer(preprocess["img_size"], "preprocess.img_size")
    crop_pct = fields.number(preprocess["crop_pct"], "preprocess.crop_pct", low=0.0, high=1.0, low_open=True)
    resize = fields.integer(preprocess["resize"], "preprocess.resize")
    expected = resize_for_crop(img_size, crop_pct)
    if resize != expected:
        fields.fail("preprocess.resize", f"{resize} does not follow from img_size {img_size} and crop_pct {crop_pct} "
                                         f"(resize = round(img_size / crop_pct) = {expected}); "
                                         "change crop_pct and resize together")
    if preprocess["interpolation"] not in INTERPOLATIONS:
        fields.fail("preprocess.interpolation",
                    f"{_show(preprocess['interpolation'])} is not one of {', '.join(INTERPOLATIONS)}")
    # mean and std are fractions of 255: 123.675 (the same on the 0-255 scale) is a classic slip
    fields.numbers(preprocess["mean"], "preprocess.mean", 3, low=0.0, high=1.0)
    fields.numbers(preprocess["std"], "preprocess.std", 3, low=0.0, high=1.0, low_open=True)
    return img_size


def _check_tensor_list(fields, value, field, first, first_shape, later_names):
    if not isinstance(value, list) or not value:
        fields.fail(field, f"expected a list of {{name, shape}}, got {_show(value)}")
    for index, item in enumerate(value):
        where = f"{field}[{index}]"
        fields.mapping(item, where, ("name", "shape"))
        allowed = (first,) if index == 0 else later_names
        if item["name"] not in allowed:
            fields.fail(f"{where}.name", f"{_show(item['name'])} is not {' or '.join(allowed)}")
        shape = item["shape"]
        if (not isinstance(shape, list) or not shape or shape[0] != -1
                or not all(isinstance(size, int) and not isinstance(size, bool) and size > 0 for size in shape[1:])):
            fields.fail(f"{where}.shape", f"expected [-1, sizes...] (dynamic batch), got {_show(shape)}")
    if value[0]["shape"] != first_shape:
        fields.fail(f"{field}[0].shape", f"{value[0]['shape']} is not {first_shape}")


def _check_exit(fields, exit_info, field, img_size, num_classes, previous):
    fields.mapping(exit_info, field, _EXIT_KEYS)
    name = fields.text(exit_info["file"], f"{field}.file")
    if os.path.basename(name) != name:
        fields.fail(f"{field}.file", f"{name!r} must be a file name in the exported directory")
    fields.integer(exit_info["grid"], f"{field}.grid")
    _check_tensor_list(fields, exit_info["inputs"], f"{field}.inputs", "images", [-1, 3, img_size, img_size],
                       tuple(_REUSED_AS.values()))
    _check_tensor_list(fields, exit_info["outputs"], f"{field}.outputs", "logits", [-1, num_classes],
                       tuple(_REUSED_AS))
    # the engine hands exit k's outputs after the logits to exit k+1, in order
    given = [{"name": _REUSED_AS[item["name"]], "shape": item["shape"]}
             for item in (previous["outputs"][1:] if previous else [])]
    if exit_info["inputs"][1:] != given:
        fields.fail(f"{field}.inputs", f"after images it must take what the previous exit passes on, {given}")
    stage = fields.number(exit_info["stage_gflops"], f"{field}.stage_gflops", low=0.0, low_open=True)
    cumulative = fields.number(exit_info["cumulative_gflops"], f"{field}.cumulative_gflops",
                               low=0.0, low_open=True)
    before = previous["cumulative_gflops"] if previous else 0.0
    if not math.isclose(cumulative, before + stage, rel_tol=1e-6):
        fields.fail(f"{field}.cumulative_gflops", f"{cumulative} is not the previous exit's {before} plus "
                                                  f"stage_gflops {stage}")
    return exit_info


def read_thresholds(path):
    """The thresholds document at ``path`` (a mapping), or a ManifestError naming the file."""
    document = _read_yaml(path, "thresholds")
    if not isinstance(document, dict):
        raise ManifestError(f"{path}: not a thresholds file (expected a mapping, got {_show(document)})")
    return document


def check_thresholds_fit(thresholds, model_name, num_exits, source, prefix=""):
    """A thresholds document must be for this model, with one number per exit in
    ``exit_thresholds`` and in every row of its ``budgets`` table (if it has one).

    ``prefix`` is where the document sits in ``source`` (``"thresholds."`` in a manifest)."""
    fields = _Fields(source)
    fields.mapping(thresholds, prefix.rstrip(".") or "thresholds")
    if thresholds.get("model") != model_name:
        raise ManifestError(f"{source} is for model {thresholds.get('model')!r}, not {model_name!r}")
    values = thresholds.get("exit_thresholds")
    if not isinstance(values, list) or len(values) != num_exits:
        raise ManifestError(f"{source} has {len(values) if isinstance(values, list) else 'no'} "
                            f"{prefix}exit_thresholds, the model has {num_exits} exits")
    fields.numbers(values, f"{prefix}exit_thresholds", num_exits)
    rows = thresholds.get("budgets")
    if rows is None:
        return
    if not isinstance(rows, list):
        fields.fail(f"{prefix}budgets", f"expected a list of rows, got {_show(rows)}")
    for index, row in enumerate(rows):
        where = f"{prefix}budgets[{index}]"
        fields.mapping(row, where)
        for key in ("exit_thresholds", "calibration_gflops", "calibration_accuracy"):
            if key not in row:
                fields.fail(where, f"missing key {key}")
        fields.numbers(row["exit_thresholds"], f"{where}.exit_thresholds", num_exits)
        fields.number(row["calibration_gflops"], f"{where}.calibration_gflops", low=0.0)
        fields.number(row["calibration_accuracy"], f"{where}.calibration_accuracy", low=0.0, high=100.0)


def load_thresholds(path, manifest):
    """A calibrated thresholds document (from run_eval.sh), checked against the manifest."""
    document = read_thresholds(path)
    check_thresholds_fit(document, manifest["model"], manifest["num_exits"], path)
    return document


def select_budget(thresholds_document, budget_gflops, source):
    """The calibrated row with the best calibration accuracy whose expected cost fits the budget."""
    rows = thresholds_document.get("budgets") or []
    if not rows:
        raise ManifestError(f"{source} has no budget table; pass --thresholds instead of --budget")
    fitting = [row for row in rows if row["calibration_gflops"] <= budget_gflops]
    if not fitting:
        cheapest = min(row["calibration_gflops"] for row in rows)
        raise ManifestError(f"budget {budget_gflops} GFLOPs is below the cheapest calibrated setting "
                            f"({cheapest:.4f} GFLOPs per image) in {source}")
    best = max(fitting, key=lambda row: (row["calibration_accuracy"], -row["calibration_gflops"]))
    return [float(t) for t in best["exit_thresholds"]]
