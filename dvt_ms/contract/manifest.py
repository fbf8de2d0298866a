"""``manifest.yaml``: what an exported model directory holds and how to run it (docs/deployment.md).

Export builds it (``build_manifest``) and checks it before writing anything; deployment reads
only it and the MindIR files it names (``load_manifest``). Everything is checked on loading,
before any image is classified: a hand-edited manifest that cannot be used is one ``ManifestError``
naming the file and listing every problem, each by its path (``exits[1].stage_gflops``).
"""
import math
import os

from ..errors import ManifestError
from ..schema import Field, check_fields, nest_problems, raise_problems
from .digest import DIGEST_FIELDS, digest_problems
from .precision import DEFAULT_PRECISION, PRECISIONS
from .preprocessing import PREPROCESS_FIELDS, preprocess_problems
from .signature import TENSOR_FIELDS, signature_problems
from .thresholds import thresholds_problems
from .yamlio import read_yaml

__all__ = ["MANIFEST_NAME", "MANIFEST_FORMAT", "GRAPH_TARGETS", "PORTABLE_TARGET", "exit_file", "build_manifest",
           "load_manifest", "check_manifest", "manifest_problems"]

MANIFEST_NAME = "manifest.yaml"
MANIFEST_FORMAT = "dvt-ms-mindir/1"

# The devices an export makes its graphs for: the T2T soft split is Im2Col for the CPU (its fastest
# form there), slices elsewhere (Im2Col is an AI CPU kernel on Ascend and may be missing from
# MindSpore Lite). The portable graphs run with fast kernels on every backend.
GRAPH_TARGETS = ("Ascend", "GPU", "CPU")
PORTABLE_TARGET = "Ascend"

_EXIT_FIELDS = (
    Field("file", "str", required=True, doc="the MindIR file, in the exported directory"),
    Field("grid", "int", required=True, minimum=1, doc="the exit's token grid"),
    Field("inputs", "mappings", required=True, fields=TENSOR_FIELDS, doc="what the graph takes"),
    Field("outputs", "mappings", required=True, fields=TENSOR_FIELDS, doc="what the graph gives"),
    Field("stage_gflops", "number", required=True, above=0.0, doc="GFLOPs per image of this exit's stage"),
    Field("cumulative_gflops", "number", required=True, above=0.0, doc="GFLOPs per image up to this exit"),
)


def _manifest_fields(num_exits, num_classes):
    """The manifest's fields, list lengths set by its ``num_exits`` and ``num_classes`` (None if
    those are invalid themselves). architecture, digest, precision and graph_target may be absent:
    manifests written before they existed."""
    return (
        Field("format", "str", required=True, choices=(MANIFEST_FORMAT,)),
        Field("model", "str", required=True, doc="the preset exported"),
        Field("architecture", "mapping", doc="the model config"),
        Field("digest", "mapping", fields=DIGEST_FIELDS, doc="the architecture and weights exported"),
        Field("num_exits", "int", required=True, minimum=1),
        Field("num_classes", "int", required=True, minimum=1),
        Field("class_names", "strs", required=True, nullable=True, length=num_classes,
              doc="null or one name per class"),
        Field("preprocess", "mapping", required=True, fields=PREPROCESS_FIELDS, doc="the preprocessing record"),
        Field("precision", "str", DEFAULT_PRECISION, choices=PRECISIONS),
        Field("graph_target", "str", nullable=True, choices=GRAPH_TARGETS,
              doc="the device the graphs were made for (absent: written before it was recorded)"),
        Field("exits", "mappings", required=True, length=num_exits, fields=_EXIT_FIELDS, doc="one per exit"),
        Field("thresholds", "mapping", required=True, nullable=True, doc="null or a thresholds document"),
    )


def _count(value):
    """``value`` if it is a valid count (an integer >= 1), else None."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 1 else None


def exit_file(exit_index):
    """The MindIR file name of exit ``exit_index`` (0-based) in an exported directory."""
    return f"exit{exit_index + 1}.mindir"


def build_manifest(model_name, architecture, digest, class_names, preprocess, precision, exits, thresholds=None,
                   graph_target=PORTABLE_TARGET):
    """The manifest of an export (not yet checked: ``check_manifest``).

    ``architecture``: the model config as plain values; ``digest``: ``digest.digest_of`` the
    weights exported; ``preprocess``: ``preprocessing.preprocess_record``; ``exits``: per exit
    ``file``, ``grid``, ``inputs``/``outputs`` (``signature.exit_signature``), ``stage_gflops``
    and ``cumulative_gflops``; ``thresholds``: a thresholds document or None; ``graph_target``: one
    of ``GRAPH_TARGETS``, the device the graphs are made for."""
    return {"format": MANIFEST_FORMAT, "model": model_name, "architecture": architecture, "digest": dict(digest),
            "num_exits": len(exits), "num_classes": exits[0]["outputs"][0]["shape"][1],
            "class_names": class_names, "preprocess": preprocess, "precision": precision,
            "graph_target": graph_target, "exits": exits, "thresholds": thresholds}


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
    """Check every field the engine, the preprocessing and the summary use; returns ``manifest``,
    or raises one ManifestError headed by ``source`` that lists every problem.

    The stored thresholds are checked field by field; their digest was matched to the weights
    when the export stored them."""
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise ManifestError(f"{source}: not a {MANIFEST_FORMAT} manifest (format: {found})")
    raise_problems(manifest_problems(manifest), source, ManifestError)
    return manifest


def manifest_problems(manifest):
    """Every problem of a manifest (a mapping), each named by its path in the document."""
    num_exits, num_classes = _count(manifest.get("num_exits")), _count(manifest.get("num_classes"))
    values, problems = check_fields(_manifest_fields(num_exits, num_classes), manifest)
    if values.get("model") == "":
        problems.append("model must be the preset's name, got ''")
    if values.get("digest"):
        problems += digest_problems(values["digest"])
    preprocess = values.get("preprocess", {})
    problems += preprocess_problems(preprocess)
    previous = None
    for index, exit_info in enumerate(values.get("exits", ())):
        problems += _exit_problems(exit_info, f"exits[{index}]", preprocess.get("img_size"), num_classes, previous)
        previous = exit_info
    if previous is not None and len(previous.get("outputs", ())) > 1:
        problems.append(f"exits[{len(values['exits']) - 1}].outputs must be only logits: the last exit passes "
                        "nothing on")
    if isinstance(manifest.get("thresholds"), dict):
        problems += nest_problems("thresholds", thresholds_problems(manifest["thresholds"], values.get("model"),
                                                                    num_exits))
    return problems


def _exit_problems(exit_info, where, img_size, num_classes, previous):
    """What the fields alone cannot say about one exit (``exit_info``: its valid values)."""
    problems = []
    name = exit_info.get("file")
    if name is not None and (not name or os.path.basename(name) != name):
        problems.append(f"{where}.file must be a file name in the exported directory, got {name!r}")
    problems += signature_problems(exit_info, where, img_size, num_classes, previous)
    stage, cumulative = exit_info.get("stage_gflops"), exit_info.get("cumulative_gflops")
    before = previous.get("cumulative_gflops") if previous is not None else 0.0
    if None not in (stage, cumulative, before) and not math.isclose(cumulative, before + stage, rel_tol=1e-6):
        problems.append(f"{where}.cumulative_gflops {cumulative} is not the previous exit's {before} plus "
                        f"stage_gflops {stage}")
    return problems
