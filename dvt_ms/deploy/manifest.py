"""The contract between export and deployment: ``manifest.yaml`` and the thresholds document.

``run_export.sh`` writes the manifest (format ``MANIFEST_FORMAT``); the engine reads only it and
the MindIR files it names. A thresholds document (``thresholds.yaml`` from calibration) holds the
calibrated ``exit_thresholds`` and, optionally, the table of budgets they were chosen from.
"""
import os

import yaml

from ..errors import ManifestError

__all__ = ["MANIFEST_NAME", "MANIFEST_FORMAT", "load_manifest", "read_thresholds", "check_thresholds_fit",
           "load_thresholds", "select_budget"]

MANIFEST_NAME = "manifest.yaml"
MANIFEST_FORMAT = "dvt-ms-mindir/1"


def load_manifest(model_dir):
    path = os.path.join(model_dir, MANIFEST_NAME)
    if not os.path.isfile(path):
        raise ManifestError(f"{model_dir}: no {MANIFEST_NAME} (is this a directory written by run_export.sh?)")
    with open(path, encoding="utf-8") as handle:
        manifest = yaml.safe_load(handle)
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise ManifestError(f"{path}: not a {MANIFEST_FORMAT} manifest")
    for exit_info in manifest["exits"]:
        file_path = os.path.join(model_dir, exit_info["file"])
        if not os.path.isfile(file_path):
            raise ManifestError(f"{model_dir}: MindIR file {exit_info['file']} named in {MANIFEST_NAME} is missing")
    return manifest


def read_thresholds(path):
    """The thresholds document at ``path`` (a mapping), or a ManifestError naming the file."""
    try:
        with open(path, encoding="utf-8") as handle:
            document = yaml.safe_load(handle)
    except OSError as err:
        raise ManifestError(f"cannot read thresholds {path}: {err.strerror}") from None
    except yaml.YAMLError as err:
        raise ManifestError(f"{path} is not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(document, dict):
        raise ManifestError(f"{path}: not a thresholds file (expected a mapping)")
    return document


def check_thresholds_fit(thresholds, model_name, num_exits, source):
    """A thresholds document must be for this model and have one threshold per exit."""
    if thresholds.get("model") != model_name:
        raise ManifestError(f"{source} is for model {thresholds.get('model')!r}, not {model_name!r}")
    values = thresholds.get("exit_thresholds")
    if not isinstance(values, list) or len(values) != num_exits:
        raise ManifestError(f"{source} has {len(values) if isinstance(values, list) else 'no'} exit_thresholds, "
                            f"the model has {num_exits} exits")


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
