"""Command line: export a trained cascade as one MindIR per exit plus ``manifest.yaml``.

    python -m dvt_ms.export CONFIG --ckpt X.ckpt --out DIR [--thresholds T.yaml] [key=value ...]

Exit k's graph takes the images and exit k-1's reuse tensors and returns its logits and the reuse
tensors exit k+1 needs, all with a dynamic batch dimension, so an engine can pass on only the
images that did not exit. The manifest says how to preprocess, what each graph takes and gives,
each exit's GFLOPs and, when given, the calibrated thresholds.
"""
import logging
import os
import sys

from .. import cli
from ..imagefolder import class_folders

LOGGER = logging.getLogger(__name__)


def _class_names(config, num_classes, run_dir):
    """The class names the heads were trained with: the run's record (``config`` holds it when the
    checkpoint lies in its run folder) or the config's, else the class folder names of the training
    split when it is an image folder with the right count (said in a warning: folders change), else
    None (warned: results will then name class indices)."""
    if config.class_names:
        return list(config.class_names)
    names = None
    if config.dataset == "imagenet" and config.data_dir and not run_dir:
        root = os.path.join(config.data_dir, config.train_split)
        if os.path.isdir(root):
            names = class_folders(root)
            names = names if len(names) == num_classes else None
    if names:
        LOGGER.warning("class names taken from the folders of %s as they are now (the checkpoint is not in a "
                       "training run's folder, whose record would say what it learned)",
                       os.path.join(config.data_dir, config.train_split))
    else:
        LOGGER.warning("the exported model has no class names: results will name class indices (set class_names "
                       "in the config, or export a checkpoint from its training run's folder)")
    return names


def _run(args):
    from ..checkpoint import load_model_weights
    from ..contract.preprocessing import preprocess_record, preset_preprocessing
    from ..contract.thresholds import check_thresholds, read_thresholds
    from ..device import set_float32_precision, use_device
    from ..fileio import prepare_staged_directory
    from ..models import DVT
    from ..runrecord import config_for_checkpoint
    from .writer import EXPORT_FOLDER, export_model

    config, run_dir = config_for_checkpoint(args.config, args.ckpt, cli.parse_overrides(args.overrides),
                                            command="export")
    prepare_staged_directory(args.out, EXPORT_FOLDER, args.overwrite)
    thresholds = None
    if args.thresholds:
        thresholds = read_thresholds(args.thresholds)
        check_thresholds(thresholds, config.model, config.arch.num_exits, args.thresholds)
    device = use_device(config.device_target).device
    set_float32_precision(device, config.fast_float32)
    graph_target = device if args.graph_target == "auto" else args.graph_target
    model = DVT(config.arch)
    load_model_weights(model, args.ckpt, use_ema=not args.no_ema)
    defaults = preset_preprocessing(config.model)
    preprocess = preprocess_record(model.config.img_size, config.crop_pct, config.interpolation,
                                   defaults["mean"], defaults["std"])
    export_model(model, args.out, config.model, preprocess, _class_names(config, model.config.num_classes, run_dir),
                 thresholds, args.overwrite, args.precision, args.accept_thresholds_mismatch,
                 thresholds_source=args.thresholds, graph_target=graph_target)
    print(f"exported {model.config.num_exits} exits for {graph_target} to {args.out}")


def main(argv=None):
    from ..contract.digest import ACCEPT_MISMATCH_FLAG
    from ..contract.precision import DEFAULT_PRECISION, PRECISIONS
    from ..contract.manifest import GRAPH_TARGETS

    parser = cli.argument_parser("dvt_ms.export", __doc__)
    parser.add_argument("config", help="YAML config of the model (when --ckpt lies in a training run's folder, "
                        "the model, class names and preprocessing come from that run's config.yaml)")
    parser.add_argument("--ckpt", required=True, help="converted published or trained checkpoint")
    parser.add_argument("--out", required=True, help="directory for exit*.mindir and manifest.yaml")
    parser.add_argument("--thresholds", help="thresholds.yaml from run_eval.sh (or the X.published.yaml the converter "
                        "wrote beside a converted checkpoint), stored in the manifest; it must be calibrated on "
                        "these weights")
    parser.add_argument(ACCEPT_MISMATCH_FLAG, action="store_true",
                        help="store thresholds calibrated on other weights (or recording none) anyway")
    parser.add_argument("--no_ema", action="store_true", help="use the model weights even if the checkpoint has EMA")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier export in --out (a folder holding anything "
                        "else is never replaced)")
    parser.add_argument("--precision", choices=PRECISIONS, default=DEFAULT_PRECISION,
                        help="compute dtype of the graphs; float16/bfloat16 keep LayerNorm and the model's float32 "
                             "islands in float32 (convert them for Ascend with precision_mode=enforce_origin)")
    parser.add_argument("--graph_target", choices=("auto", *GRAPH_TARGETS), default="auto",
                        help="the device the graphs are for (auto: the one export runs on): the T2T soft split is "
                             "Im2Col on CPU (fastest there), slices elsewhere (Im2Col is an AI CPU kernel on Ascend "
                             "and may be missing from MindSpore Lite)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    args = parser.parse_intermixed_args(argv)   # key=value may follow the options
    cli.setup_logging(timestamps=False)
    return cli.run(lambda: _run(args), defer_interrupts=True)


if __name__ == "__main__":
    sys.exit(main())
