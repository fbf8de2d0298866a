"""``manifest.yaml``: what an exported model directory holds and how to run it (docs/deployment.md).

Export builds it (``build_manifest``) and checks it before writing anything; deployment reads
only it and the MindIR files it names (``load_manifest``). Everything is checked on loading,
before any image is classified: a hand-edited manifest that cannot be used is a ``ManifestError``
naming the file and the field.
"""
import math
import os

from ..errors import ManifestError
from .digest import check_digest
from .fields import Fields, read_yaml, show
from .precision import DEFAULT_PRECISION, PRECISIONS
from .preprocessing import check_preprocess
from .signature import check_exit_signature
from .thresholds import check_thresholds

__all__ = ["MANIFEST_NAME", "MANIFEST_FORMAT", "exit_file", "build_manifest", "load_manifest", "check_manifest"]

MANIFEST_NAME = "manifest.yaml"
MANIFEST_FORMAT = "dvt-ms-mindir/1"

_MANIFEST_KEYS = ("format", "model", "architecture", "digest", "num_exits", "num_classes", "class_names",
                  "preprocess", "precision", "exits", "thresholds")
# absent in manifests written before they existed
_OPTIONAL_KEYS = ("architecture", "digest", "precision")
_EXIT_KEYS = ("file", "grid", "inputs", "outputs", "stage_gflops", "cumulative_gflops")


def exit_file(exit_index):
    """The MindIR file name of exit ``exit_index`` (0-based) in an exported directory."""
    return f"exit{exit_index + 1}.mindir"


def build_manifest(model_name, architecture, digest, class_names, preprocess, precision, exits, thresholds=None):
    """The manifest of an export (not yet checked: ``check_manifest``).

    ``architecture``: the model config as plain values; ``digest``: ``digest.digest_of`` the
    weights exported; ``preprocess``: ``preprocessing.preprocess_record``; ``exits``: per exit
    ``file``, ``grid``, ``inputs``/``outputs`` (``signature.exit_signature``), ``stage_gflops``
    and ``cumulative_gflops``; ``thresholds``: a thresholds document or None."""
    return {"format": MANIFEST_FORMAT, "model": model_name, "architecture": architecture, "digest": dict(digest),
            "num_exits": len(exits), "num_classes": exits[0]["outputs"][0]["shape"][1],
            "class_names": class_names, "preprocess": preprocess, "precision": precision, "exits": exits,
            "thresholds": thresholds}


def load_manifest(model_dir):
    """The checked manifest of the exported directory ``model_dir`` (ManifestError naming the field)."""
    path = os.path.join(model_dir, MANIFEST_NAME)
    if not os.path.isfile(path):
        raise ManifestError(f"{model_dir}: no {MANIFEST_NAME} (is this a directory written by run_export.sh?)")
    manifest = read_yaml(path, "manifest")
    check_manifest(manifest, path)
    for index, exit_info in enumerate(manifest["exits"]):
        if not os.path.isfile(os.path.join(model_dir, exit_info["file"])):
            raise ManifestError(f"{model_dir}: MindIR file {exit_info['file']} named in {MANIFEST_NAME} "
                                f"(exits[{index}].file) is missing")
    return manifest


def check_manifest(manifest, source):
    """Check every field the engine, the preprocessing and the summary use; returns ``manifest``.

    The stored thresholds are checked field by field; their digest was matched to the weights
    when the export stored them."""
    fields = Fields(source)
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else show(manifest)
        raise ManifestError(f"{source}: not a {MANIFEST_FORMAT} manifest (format: {found})")
    fields.mapping(manifest, "manifest", _MANIFEST_KEYS, optional=_OPTIONAL_KEYS)
    fields.text(manifest["model"], "model")
    fields.choice(manifest.get("precision", DEFAULT_PRECISION), "precision", PRECISIONS)
    if "architecture" in manifest:
        fields.mapping(manifest["architecture"], "architecture")
    if "digest" in manifest:
        check_digest(fields, manifest["digest"])
    num_exits = fields.integer(manifest["num_exits"], "num_exits")
    num_classes = fields.integer(manifest["num_classes"], "num_classes")
    names = manifest["class_names"]
    if names is not None and (not isinstance(names, list) or len(names) != num_classes
                              or not all(isinstance(name, str) for name in names)):
        fields.fail("class_names", f"expected null or a list of {num_classes} names, got {show(names)}")
    img_size = check_preprocess(fields, manifest["preprocess"])
    exits = manifest["exits"]
    if not isinstance(exits, list) or len(exits) != num_exits:
        fields.fail("exits", f"expected a list of num_exits = {num_exits} exits, got "
                             f"{len(exits) if isinstance(exits, list) else show(exits)}")
    previous = None
    for index, exit_info in enumerate(exits):
        previous = _check_exit(fields, exit_info, f"exits[{index}]", img_size, num_classes, previous)
    if previous["outputs"][1:]:
        fields.fail(f"exits[{num_exits - 1}].outputs", "the last exit passes nothing on: only logits")
    if manifest["thresholds"] is not None:
        check_thresholds(manifest["thresholds"], manifest["model"], num_exits, source, "thresholds.")
    return manifest


def _check_exit(fields, exit_info, field, img_size, num_classes, previous):
    fields.mapping(exit_info, field, _EXIT_KEYS)
    name = fields.text(exit_info["file"], f"{field}.file")
    if os.path.basename(name) != name:
        fields.fail(f"{field}.file", f"{name!r} must be a file name in the exported directory")
    fields.integer(exit_info["grid"], f"{field}.grid")
    check_exit_signature(fields, exit_info, field, img_size, num_classes, previous)
    stage = fields.number(exit_info["stage_gflops"], f"{field}.stage_gflops", low=0.0, low_open=True)
    cumulative = fields.number(exit_info["cumulative_gflops"], f"{field}.cumulative_gflops",
                               low=0.0, low_open=True)
    before = previous["cumulative_gflops"] if previous else 0.0
    if not math.isclose(cumulative, before + stage, rel_tol=1e-6):
        fields.fail(f"{field}.cumulative_gflops", f"{cumulative} is not the previous exit's {before} plus "
                                                  f"stage_gflops {stage}")
    return exit_info
