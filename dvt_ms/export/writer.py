"""Writing an exported model directory: one MindIR per exit and the manifest (docs/deployment.md).

What the directory holds is the contract's (``dvt_ms.contract``: the manifest, each exit's
signature, the preprocessing record, the precisions, the weights digest); this module builds the
graphs and writes them. The directory appears complete or not at all: everything is written to a
temporary sibling that is renamed into place at the end.
"""
import dataclasses
import logging
import os

import mindspore as ms

from ..cli import raise_if_stop_requested
from ..contract.digest import check_bound, model_digest
from ..contract.yamlio import dump_yaml
from ..contract.manifest import (GRAPH_TARGETS, MANIFEST_NAME, PORTABLE_TARGET, build_manifest, check_manifest,
                                 exit_file)
from ..contract.precision import PRECISIONS
from ..contract.signature import exit_signature
from ..contract.thresholds import check_thresholds
from ..fileio import OutputFolderKind, staged_directory, through_safe_name
from ..models.cpu_kernels import use_native_ops
from ..models.flops import model_flops
from ..models.tokenizers import use_soft_split_for
from .graphs import ExitGraph

__all__ = ["EXPORT_FOLDER", "export_model"]

# What run_export.sh recognises as its own output folder (the only kind of folder --overwrite replaces).
EXPORT_FOLDER = OutputFolderKind("an exported model", MANIFEST_NAME, ("exit*.mindir", MANIFEST_NAME))

LOGGER = logging.getLogger(__name__)

# MindSpore dtype of each low precision (float32 needs no conversion).
_LOW_PRECISION_DTYPES = {"float16": ms.float16, "bfloat16": ms.bfloat16}


def _placeholder(shape):
    return ms.Tensor(shape=[None if size == -1 else size for size in shape], dtype=ms.float32)


def export_model(model, out_dir, model_name, preprocess, class_names=None, thresholds=None, overwrite=False,
                 precision="float32", accept_thresholds_mismatch=False, thresholds_source="the thresholds",
                 graph_target=PORTABLE_TARGET):
    """Write ``exit{k}.mindir`` for every exit and ``manifest.yaml`` into ``out_dir``.

    ``preprocess``: the contract's preprocessing record (``dvt_ms.contract.preprocessing.preprocess_record``).
    ``thresholds``: a thresholds document (``dvt_ms.contract.thresholds``, from ``thresholds_source``),
    or None; it must be for this model and, unless ``accept_thresholds_mismatch``, calibrated on
    these weights (its digest is the model's).
    ``precision``: one of the contract's ``PRECISIONS``; other than float32 it converts ``model`` in place.
    ``model`` is switched to MindSpore's native ops in place (no compiled CPU kernels, which the
    deployment machine would not have) and to the T2T soft split fastest on ``graph_target`` (the
    device the graphs are meant for: Im2Col on CPU, slices elsewhere; the default, Ascend, gives
    graphs that run with fast kernels on every backend), so the Cells and the exported graphs
    compute the same (both forms give the same numbers).
    The directory appears complete or not at all: everything is written to a temporary sibling
    that is renamed into place at the end."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if graph_target not in GRAPH_TARGETS:
        raise ValueError(f"graph_target must be one of {', '.join(GRAPH_TARGETS)}, got {graph_target!r}")
    config = model.config
    manifest_path = os.path.join(out_dir, MANIFEST_NAME)
    digest = model_digest(model)    # of the weights as loaded, before any precision conversion
    if thresholds is not None:
        check_thresholds(thresholds, model_name, config.num_exits, thresholds_source)
        check_bound(thresholds.get("digest"), thresholds_source, digest, f"the weights exported to {out_dir}",
                    accept_thresholds_mismatch)
    flops = model_flops(config)
    exits = [{"file": exit_file(k), "grid": config.grids[k], **exit_signature(config, k),
              "stage_gflops": flops[k]["stage_gflops"], "cumulative_gflops": flops[k]["cumulative_gflops"]}
             for k in range(config.num_exits)]
    manifest = build_manifest(model_name, _plain(dataclasses.asdict(config)), digest, class_names, preprocess,
                              precision, exits, thresholds, graph_target)
    check_manifest(manifest, manifest_path)   # what deployment will check, before any work
    with staged_directory(out_dir, EXPORT_FOLDER, overwrite) as staging:
        if precision in _LOW_PRECISION_DTYPES:
            ms.amp.auto_mixed_precision(model, "O2", _LOW_PRECISION_DTYPES[precision])   # converts the stages in place
        use_native_ops(model)
        use_soft_split_for(model, graph_target)   # no Im2Col but for CPU: AI CPU only on Ascend, maybe absent in Lite
        model.set_train(False)
        for k, info in enumerate(exits):
            inputs = [_placeholder(item["shape"]) for item in info["inputs"]]
            # MindSpore refuses paths with spaces or non-ASCII characters: write through a safe name.
            with through_safe_name(os.path.join(staging, info["file"])) as file_name:
                ms.export(ExitGraph(model, k), *inputs, file_name=file_name, file_format="MINDIR")
            LOGGER.info("exported exit %d/%d", k + 1, config.num_exits)
            raise_if_stop_requested()   # a Ctrl-C during MindSpore's export is honoured here; nothing is kept
        with open(os.path.join(staging, MANIFEST_NAME), "w", encoding="utf-8") as handle:
            handle.write(dump_yaml(manifest))
    LOGGER.info("wrote %d MindIR files and %s to %s", config.num_exits, MANIFEST_NAME, out_dir)
    return manifest


def _plain(value):
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value
