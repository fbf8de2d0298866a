"""Writing an exported model directory: one MindIR per exit and the manifest (docs/deployment.md).

The directory appears complete or not at all: everything is written to a temporary sibling that
is renamed into place at the end.
"""
import dataclasses
import logging
import os

import mindspore as ms
import yaml

from ..deploy.manifest import MANIFEST_FORMAT, MANIFEST_NAME, check_manifest
from ..cli import raise_if_stop_requested
from ..fileio import OutputFolderKind, staged_directory, through_safe_name
from ..models.cpu_kernels import use_native_ops
from ..models.flops import model_flops
from .graphs import ExitGraph, exit_signature

__all__ = ["EXPORT_FOLDER", "IMAGENET_MEAN", "IMAGENET_STD", "PRECISIONS", "export_model"]

# What run_export.sh recognises as its own output folder (the only kind of folder --overwrite replaces).
EXPORT_FOLDER = OutputFolderKind("an exported model", MANIFEST_NAME, ("exit*.mindir", MANIFEST_NAME))

LOGGER = logging.getLogger(__name__)

# ImageNet statistics, as fractions of 255 (mindcv's eval transforms use these).
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]

# Compute dtype of the exported graphs. float16 / bfloat16: MindSpore's O2 (LayerNorm in float32)
# plus the model's own float32 islands (docs/model.md, "Precision"); inputs and outputs stay float32.
PRECISIONS = {"float32": None, "float16": ms.float16, "bfloat16": ms.bfloat16}


def _placeholder(shape):
    return ms.Tensor(shape=[None if size == -1 else size for size in shape], dtype=ms.float32)


def export_model(model, out_dir, model_name, preprocess, class_names=None, thresholds=None, overwrite=False,
                 precision="float32"):
    """Write ``exit{k}.mindir`` for every exit and ``manifest.yaml`` into ``out_dir``.

    ``preprocess``: dict with img_size, crop_pct, resize (``dvt_ms.deploy.preprocess.resize_for_crop``),
    interpolation, mean, std (fractions of 255).
    ``thresholds``: a thresholds document from calibration (``dvt_ms.calibrate``), or None.
    ``precision``: a key of ``PRECISIONS``; other than float32 it converts ``model`` in place.
    ``model`` is switched to MindSpore's native ops in place (no compiled CPU kernels, which the
    deployment machine would not have), so the Cells and the exported graphs compute the same.
    The directory appears complete or not at all: everything is written to a temporary sibling
    that is renamed into place at the end."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    config = model.config
    flops = model_flops(config)
    exits = [{"file": f"exit{k + 1}.mindir", "grid": config.grids[k], **exit_signature(config, k),
              "stage_gflops": flops[k]["stage_gflops"], "cumulative_gflops": flops[k]["cumulative_gflops"]}
             for k in range(config.num_exits)]
    manifest = {"format": MANIFEST_FORMAT, "model": model_name,
                "architecture": _plain(dataclasses.asdict(config)), "num_exits": config.num_exits,
                "num_classes": config.num_classes, "class_names": class_names, "preprocess": preprocess,
                "precision": precision, "exits": exits, "thresholds": thresholds}
    check_manifest(manifest, os.path.join(out_dir, MANIFEST_NAME))   # what deployment will check, before any work
    with staged_directory(out_dir, EXPORT_FOLDER, overwrite) as staging:
        if PRECISIONS[precision] is not None:
            ms.amp.auto_mixed_precision(model, "O2", PRECISIONS[precision])   # converts the stages in place
        use_native_ops(model)
        model.set_train(False)
        for k, info in enumerate(exits):
            inputs = [_placeholder(item["shape"]) for item in info["inputs"]]
            # MindSpore refuses paths with spaces or non-ASCII characters: write through a safe name.
            with through_safe_name(os.path.join(staging, info["file"])) as file_name:
                ms.export(ExitGraph(model, k), *inputs, file_name=file_name, file_format="MINDIR")
            LOGGER.info("exported exit %d/%d", k + 1, config.num_exits)
            raise_if_stop_requested()   # a Ctrl-C during MindSpore's export is honoured here; nothing is kept
        with open(os.path.join(staging, MANIFEST_NAME), "w", encoding="utf-8") as handle:
            yaml.safe_dump(manifest, handle, sort_keys=False)
    LOGGER.info("wrote %d MindIR files and %s to %s", config.num_exits, MANIFEST_NAME, out_dir)
    return manifest


def _plain(value):
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value
