"""Export a trained cascade as one MindIR file per exit, plus a manifest for deployment.

    python -m dvt_ms.export CONFIG --ckpt X.ckpt --out DIR [--thresholds T.yaml] [key=value ...]

Exit k's graph takes the images and exit k-1's reuse tensors and returns its logits and the reuse
tensors exit k+1 needs, all with a dynamic batch dimension, so an engine can pass on only the
images that did not exit. The manifest (manifest.yaml) says how to preprocess, what each graph
takes and gives, each exit's GFLOPs and, when given, the calibrated thresholds.
"""
import argparse
import dataclasses
import logging
import os
import sys

import mindspore as ms
import yaml
from mindspore import nn

from .fileio import staged_directory
from .flops import model_flops

__all__ = ["MANIFEST_NAME", "MANIFEST_FORMAT", "ExitGraph", "exit_signature", "export_model"]

LOGGER = logging.getLogger(__name__)
MANIFEST_NAME = "manifest.yaml"
MANIFEST_FORMAT = "dvt-ms-mindir/1"


def exit_signature(config, exit_index):
    """Names and shapes (-1 = dynamic batch) of exit ``exit_index``'s inputs and outputs."""
    def feature(grid):
        return [-1, 1 + grid * grid, config.embed_dim]

    def relations(grid):
        tokens = 1 + grid * grid
        return [-1, config.num_heads * config.depth, tokens, tokens]

    grids = config.grids
    inputs = [{"name": "images", "shape": [-1, 3, config.img_size, config.img_size]}]
    takes_feature, takes_relations = config.stage_reuses(exit_index)
    if takes_feature:
        inputs.append({"name": "prev_feature", "shape": feature(grids[exit_index - 1])})
    if takes_relations:
        inputs.append({"name": "prev_relations", "shape": relations(grids[exit_index - 1])})
    outputs = [{"name": "logits", "shape": [-1, config.num_classes]}]
    if exit_index + 1 < config.num_exits:
        gives_feature, gives_relations = config.stage_reuses(exit_index + 1)
        if gives_feature:
            outputs.append({"name": "feature", "shape": feature(grids[exit_index])})
        if gives_relations:
            outputs.append({"name": "relations", "shape": relations(grids[exit_index])})
    return {"inputs": inputs, "outputs": outputs}


class ExitGraph(nn.Cell):
    """Exit ``exit_index`` as deployed: ``(images, *reuse inputs) -> (logits, *reuse outputs)``,
    in the order of ``exit_signature``."""

    def __init__(self, model, exit_index):
        super().__init__(auto_prefix=False)
        signature = exit_signature(model.config, exit_index)
        input_names = [item["name"] for item in signature["inputs"]]
        output_names = [item["name"] for item in signature["outputs"]]
        self.stage = model.stages[exit_index]
        self.takes_feature = "prev_feature" in input_names
        self.takes_relations = "prev_relations" in input_names
        self.gives_feature = "feature" in output_names
        self.gives_relations = "relations" in output_names

    def construct(self, images, *reused):
        prev_feature = reused[0] if self.takes_feature else None
        prev_relations = reused[-1] if self.takes_relations else None
        logits, feature, relations = self.stage(images, prev_feature, prev_relations)
        outputs = (logits,)
        if self.gives_feature:
            outputs = outputs + (feature,)
        if self.gives_relations:
            outputs = outputs + (relations,)
        return outputs


def _placeholder(shape):
    return ms.Tensor(shape=[None if size == -1 else size for size in shape], dtype=ms.float32)


def export_model(model, out_dir, model_name, preprocess, class_names=None, thresholds=None, overwrite=False):
    """Write ``exit{k}.mindir`` for every exit and ``manifest.yaml`` into ``out_dir``.

    ``preprocess``: dict with img_size, resize, interpolation, mean, std (fractions of 255).
    ``thresholds``: a thresholds document from calibration (``dvt_ms.evaluate``), or None.
    The directory appears complete or not at all: everything is written to a temporary sibling
    that is renamed into place at the end."""
    config = model.config
    if thresholds is not None:
        check_thresholds_fit(thresholds, model_name, config.num_exits, "thresholds")
    if class_names is not None and len(class_names) != config.num_classes:
        raise ValueError(f"{len(class_names)} class names for a model with {config.num_classes} classes")
    with staged_directory(out_dir, overwrite) as staging:
        model.set_train(False)
        flops = model_flops(config)
        exits = []
        for exit_index in range(config.num_exits):
            signature = exit_signature(config, exit_index)
            file_name = f"exit{exit_index + 1}.mindir"
            inputs = [_placeholder(item["shape"]) for item in signature["inputs"]]
            ms.export(ExitGraph(model, exit_index), *inputs, file_name=os.path.join(staging, file_name),
                      file_format="MINDIR")
            exits.append({"file": file_name, "grid": config.grids[exit_index], **signature,
                          "stage_gflops": flops[exit_index]["stage_gflops"],
                          "cumulative_gflops": flops[exit_index]["cumulative_gflops"]})
            LOGGER.info("exported exit %d/%d", exit_index + 1, config.num_exits)
        manifest = {"format": MANIFEST_FORMAT, "model": model_name,
                    "architecture": _plain(dataclasses.asdict(config)), "num_exits": config.num_exits,
                    "num_classes": config.num_classes, "class_names": class_names, "preprocess": preprocess,
                    "exits": exits, "thresholds": thresholds}
        with open(os.path.join(staging, MANIFEST_NAME), "w", encoding="utf-8") as handle:
            yaml.safe_dump(manifest, handle, sort_keys=False)
    LOGGER.info("wrote %d MindIR files and %s to %s", config.num_exits, MANIFEST_NAME, out_dir)
    return manifest


def check_thresholds_fit(thresholds, model_name, num_exits, source):
    """A thresholds document must be for this model and have one threshold per exit."""
    if thresholds.get("model") != model_name:
        raise ValueError(f"{source} is for model {thresholds.get('model')!r}, not {model_name!r}")
    values = thresholds.get("exit_thresholds")
    if not isinstance(values, list) or len(values) != num_exits:
        raise ValueError(f"{source} has {len(values) if isinstance(values, list) else 'no'} exit_thresholds, "
                         f"the model has {num_exits} exits")


def _plain(value):
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


# ImageNet statistics, as fractions of 255 (mindcv's eval transforms use these).
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def _class_names(config, num_classes):
    """Class folder names of the training split, when it is an image folder with the right count."""
    if config.dataset != "imagenet" or not config.data_dir:
        return None
    root = os.path.join(config.data_dir, config.train_split)
    if not os.path.isdir(root):
        return None
    names = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    return names if len(names) == num_classes else None


def main(argv=None):
    parser = argparse.ArgumentParser(prog="run_export.sh", description=__doc__.split("\n\n")[0])
    parser.add_argument("config", help="YAML config of the model")
    parser.add_argument("--ckpt", required=True, help="converted published or trained checkpoint")
    parser.add_argument("--out", required=True, help="directory for exit*.mindir and manifest.yaml")
    parser.add_argument("--thresholds", help="thresholds.yaml from run_eval.sh, stored in the manifest")
    parser.add_argument("--no_ema", action="store_true", help="use the model weights even if the checkpoint has EMA")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing export directory")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    args = parser.parse_intermixed_args(argv)   # key=value may follow the options
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    import dvt_ms
    from .cli_utils import parse_overrides
    from .config import ConfigError, load_config, model_overrides
    from .checkpoints import CheckpointError, load_model_weights
    from .runtime import resolve_device

    try:
        config = load_config(args.config, parse_overrides(args.overrides))
        thresholds = None
        if args.thresholds:
            with open(args.thresholds, encoding="utf-8") as handle:
                thresholds = yaml.safe_load(handle)
            if not isinstance(thresholds, dict):
                raise ValueError(f"{args.thresholds}: not a thresholds file")
            check_thresholds_fit(thresholds, config.model, dvt_ms.build_config(
                config.model, **model_overrides(config)).num_exits, args.thresholds)
        ms.set_context(mode=ms.GRAPH_MODE)
        ms.set_device(resolve_device(config.device_target))
        model = dvt_ms.create_model(config.model, **model_overrides(config))
        load_model_weights(model, args.ckpt, use_ema=not args.no_ema)
        preprocess = {"img_size": model.config.img_size, "crop_pct": config.crop_pct,
                      "resize": round(model.config.img_size / config.crop_pct),
                      "interpolation": config.interpolation, "mean": IMAGENET_MEAN, "std": IMAGENET_STD}
        export_model(model, args.out, config.model, preprocess, _class_names(config, model.config.num_classes),
                     thresholds, args.overwrite)
    except (CheckpointError, ConfigError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"exported {model.config.num_exits} exits to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
