"""Command line: evaluate every exit and calibrate early-exit thresholds.

    python -m dvt_ms.calibrate CONFIG --ckpt X.ckpt --data DIR [--out REPORT] [--calib_split S]
                               [--calib_size N] [key=value ...]

Runs every exit on the calibration images and on the validation split, applies the published
budgeted-batch threshold search and writes the report (see ``dvt_ms.calibrate.report``).

Calibration images (--calib_split): "holdout" = the images the training run kept out of training
(holdout.json in the run's folder, written when it trained with holdout_per_class > 0; the default when it
exists); otherwise the default is the training split, i.e. images the model was trained on (as the
authors calibrate); any other name is that split of the dataset. --calib_size draws that many of
them by the config's seed (default: 5000 of the training split, all of any other source).
"""
import logging
import os
import sys

import numpy as np

from .. import cli

LOGGER = logging.getLogger(__name__)

HOLDOUT = "holdout"
_TRAINING_SPLIT_DEFAULT_SIZE = 5000


def _run_class_names(config):
    """The class names of the run: recorded in its config, else the training split's folders (as training)."""
    from ..imagefolder import class_folders
    if config.class_names:
        return list(config.class_names), "class_names in the config"
    if config.dataset == "imagenet":
        root = os.path.join(config.data_dir, config.train_split)
        if os.path.isdir(root):
            return class_folders(root), "the training split"
    return None, "the training split"


def _calibration_split(config, args, class_names, reference, run_dir):
    """``(split, description)`` of the calibration images, chosen, checked and honestly described."""
    from ..data import ImageCheck, open_dataset, read_holdout
    from ..errors import ConfigError

    record = read_holdout(run_dir) if config.dataset == "imagenet" else None
    name = args.calib_split or (HOLDOUT if record is not None else config.train_split)
    listing_only = ImageCheck(check=False)
    if name == HOLDOUT:
        if record is None:
            raise ConfigError(f"--calib_split holdout: {os.path.join(run_dir, 'holdout.json')} does not "
                              "exist; train with holdout_per_class > 0 (output_dir is the run's folder) or pass "
                              "another --calib_split")
        split = open_dataset(config, record["split"], record.get("class_names") or class_names, listing_only,
                             reference=f"the run ({record['path']})")
        position = {rel: i for i, rel in enumerate(split.files)}
        missing = [rel for rel in record["files"] if rel not in position]
        if missing:
            LOGGER.warning("%d held-out images of %s no longer exist, e.g. %s", len(missing), record["path"],
                           os.path.join(split.root, missing[0]))
        split = split.subset([position[rel] for rel in record["files"] if rel in position])
        source = f"held-out training images (never trained on; {record['path']})"
    else:
        split = open_dataset(config, name, class_names, listing_only, reference=reference)
        if name != config.train_split:
            source = f"images of split {name!r}"
        elif record is not None:
            source = (f"images of the training split ({len(record['files'])} of its images were held out, the "
                      "others were seen in training)")
        else:
            source = "training images (seen in training)"
    size = args.calib_size
    if size is None and name == config.train_split:
        size = _TRAINING_SPLIT_DEFAULT_SIZE
    if size is not None and size > split.num_samples:
        LOGGER.warning("--calib_size %d but there are only %d %s: calibrating on all %d", size, split.num_samples,
                       source, split.num_samples)
    if size is not None and size < split.num_samples:
        split = split.subset(np.sort(np.random.default_rng(config.seed).choice(split.num_samples, size,
                                                                               replace=False)))
    if split.files is not None and config.verify_images:
        split = split.checked()
    return split, source


def _scores(model, config, split, img_size, description):
    from ..data import make_loader
    from .scores import score_exits
    order = np.arange(split.num_samples)
    loader = make_loader(split, order, config, img_size, split.num_classes, is_training=False,
                         num_workers=config.num_workers)
    return score_exits(model, loader, split, order, description)


def _run(args):
    from ..checkpoint import load_model_weights
    from ..contract.digest import model_digest
    from ..data import ImageCheck, open_dataset
    from ..device import set_float32_precision, use_device
    from ..errors import ConfigError, DataError
    from ..fileio import prepare_staged_directory
    from ..models import DVT
    from ..models.layers import use_device_kernels
    from ..models.flops import model_flops
    from ..runrecord import config_for_checkpoint
    from . import search
    from .report import REPORT_FOLDER, calibrate, write_report

    overrides = cli.parse_overrides(args.overrides)
    if args.data:
        overrides["data_dir"] = args.data
    config, run_dir = config_for_checkpoint(args.config, args.ckpt, overrides, command="calibrate")
    run_dir = run_dir or config.output_dir   # the checkpoint's run, else the config's
    if not config.data_dir:
        raise ConfigError("no dataset: pass --data DIR or set data_dir")
    out_dir = args.out or os.path.join(run_dir, "eval")
    prepare_staged_directory(out_dir, REPORT_FOLDER, args.overwrite)   # before hours of evaluation, not after
    class_names, reference = _run_class_names(config)
    calib_data, source = _calibration_split(config, args, class_names, reference, run_dir)
    cache = os.path.join(run_dir, "image_check") if os.path.isdir(run_dir) else None
    val_data = open_dataset(config, config.val_split, calib_data.class_names or class_names,
                            ImageCheck(cache, check=config.verify_images), reference=reference)
    device = use_device(config.device_target).device
    set_float32_precision(device, config.fast_float32)
    use_device_kernels(device)
    model = DVT(config.arch)
    for data in (calib_data, val_data):
        if data.num_classes != model.config.num_classes:
            raise DataError(f"{data.name} has {data.num_classes} classes, the model {model.config.num_classes}")
    load_model_weights(model, args.ckpt, use_ema=not args.no_ema)
    digest = model_digest(model)    # the weights the thresholds are bound to
    img_size = model.config.img_size
    print(f"calibration: {calib_data.num_samples} {source}")
    calib, calib_targets = _scores(model, config, calib_data, img_size, "calibration")
    val, val_targets = _scores(model, config, val_data, img_size, "validation")
    flops = model_flops(model.config)
    cumulative = [f["cumulative_gflops"] for f in flops]
    rows = calibrate(calib, calib_targets, val, val_targets, cumulative)
    per_exit, thresholds = write_report(out_dir, config.model, flops, search.anytime_accuracy(calib, calib_targets),
                                        search.anytime_accuracy(val, val_targets), rows, digest, args.overwrite,
                                        calibration={"images": len(calib_targets), "source": source})
    for row in per_exit:
        print(f"exit {row['exit']}: top-1 {row['validation_top1']:.2f}% (calibration {row['calibration_top1']:.2f}%), "
              f"{row['cumulative_gflops']:.3f} GFLOPs")
    chosen = rows[thresholds["default_budget_index"] - 1]
    print(f"default thresholds {['%.4g' % t for t in thresholds['exit_thresholds']]} (calibrated on "
          f"{len(calib_targets)} {source}): validation {chosen['validation_accuracy']:.2f}% at "
          f"{chosen['validation_gflops']:.3f} GFLOPs per image")
    print(f"report: {out_dir}")


def main(argv=None):
    parser = cli.argument_parser("dvt_ms.calibrate", __doc__)
    parser.add_argument("config", help="YAML config (its data keys are used; when --ckpt lies in a training "
                        "run's folder, the model, class names and preprocessing come from that run's config.yaml)")
    parser.add_argument("--ckpt", required=True, help="converted published or trained checkpoint")
    parser.add_argument("--data", help="dataset root (default: the config's data_dir)")
    parser.add_argument("--out", help="report directory (default: eval/ in the checkpoint's run folder, else in "
                        "the config's output_dir)")
    parser.add_argument("--calib_split", default=None, help="holdout (the run's held-out images), or the split "
                        "the calibration images come from (default: holdout if the run has one, else the "
                        "training split)")
    parser.add_argument("--calib_size", type=int, default=None,
                        help="images drawn from the calibration images (default: 5000 of the training split, "
                        "all of any other; the authors used 50000 training images)")
    parser.add_argument("--no_ema", action="store_true", help="use the model weights even if the checkpoint has EMA")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier report in --out (a folder holding anything "
                        "else is never replaced)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    args = parser.parse_intermixed_args(argv)   # key=value may follow the options
    if args.calib_size is not None and args.calib_size < 1:
        parser.error(f"--calib_size must be a positive number of images, got {args.calib_size}")
    cli.setup_logging()
    return cli.run(lambda: _run(args))


if __name__ == "__main__":
    sys.exit(main())
