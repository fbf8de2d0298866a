"""Command line: evaluate every exit and calibrate early-exit thresholds.

    python -m dvt_ms.calibrate CONFIG --ckpt X.ckpt --data DIR [--out REPORT] [--calib_size N] [key=value ...]

Runs every exit on a calibration split and on the validation split, applies the published
budgeted-batch threshold search and writes the report (see ``dvt_ms.calibrate.report``).
"""
import argparse
import logging
import os
import sys

import numpy as np

from .. import cli
from . import search
from .report import calibrate, write_report
from .scores import exit_probabilities

LOGGER = logging.getLogger(__name__)


def _loader(config, split, size, img_size):
    """Eval-transformed batches of ``split``: all of it, or ``size`` images drawn by the config's seed."""
    from ..data import make_loader, open_dataset
    data = open_dataset(config, split, config.num_workers)
    if size is None or size >= data.num_samples:
        indices = np.arange(data.num_samples)
    else:
        indices = np.sort(np.random.default_rng(config.seed).choice(data.num_samples, size, replace=False))
    loader = make_loader(data, indices, config, img_size, data.num_classes, is_training=False,
                         num_workers=config.num_workers)
    return loader, data


def _run(args):
    from ..checkpoint import load_model_weights
    from ..config import load_config, model_overrides
    from ..device import use_device
    from ..errors import ConfigError, DataError
    from ..fileio import prepare_staged_directory
    from ..models import create_model
    from ..models.flops import model_flops

    overrides = cli.parse_overrides(args.overrides)
    if args.data:
        overrides["data_dir"] = args.data
    config = load_config(args.config, overrides)
    if not config.data_dir:
        raise ConfigError("no dataset: pass --data DIR or set data_dir")
    out_dir = args.out or os.path.join(config.output_dir, "eval")
    prepare_staged_directory(out_dir, args.overwrite)   # before hours of evaluation, not after
    use_device(config.device_target)
    model = create_model(config.model, **model_overrides(config))
    load_model_weights(model, args.ckpt, use_ema=not args.no_ema)
    img_size = model.config.img_size
    calib_loader, calib_data = _loader(config, args.calib_split or config.train_split, args.calib_size, img_size)
    val_loader, val_data = _loader(config, config.val_split, None, img_size)
    for data in (calib_data, val_data):
        if data.num_classes != model.config.num_classes:
            raise DataError(f"{data.name} has {data.num_classes} classes, the model {model.config.num_classes}")
    calib_probs, calib_targets = exit_probabilities(model, calib_loader, "calibration")
    val_probs, val_targets = exit_probabilities(model, val_loader, "validation")
    flops = model_flops(model.config)
    cumulative = [f["cumulative_gflops"] for f in flops]
    rows = calibrate(calib_probs, calib_targets, val_probs, val_targets, cumulative)
    per_exit, thresholds = write_report(out_dir, config.model, flops,
                                        search.anytime_accuracy(calib_probs, calib_targets),
                                        search.anytime_accuracy(val_probs, val_targets), rows, args.overwrite)
    for row in per_exit:
        print(f"exit {row['exit']}: top-1 {row['validation_top1']:.2f}% (calibration {row['calibration_top1']:.2f}%), "
              f"{row['cumulative_gflops']:.3f} GFLOPs")
    chosen = rows[thresholds["default_budget_index"] - 1]
    print(f"default thresholds {['%.4g' % t for t in thresholds['exit_thresholds']]}: validation "
          f"{chosen['validation_accuracy']:.2f}% at {chosen['validation_gflops']:.3f} GFLOPs per image")
    print(f"report: {out_dir}")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="run_eval.sh", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("config", help="YAML config (model and data keys are used)")
    parser.add_argument("--ckpt", required=True, help="converted published or trained checkpoint")
    parser.add_argument("--data", help="dataset root (default: the config's data_dir)")
    parser.add_argument("--out", help="report directory (default: <output_dir>/eval)")
    parser.add_argument("--calib_split", default=None, help="split the calibration images come from "
                        "(default: the config's train_split)")
    parser.add_argument("--calib_size", type=int, default=5000,
                        help="images drawn from the calibration split (the authors used 50000)")
    parser.add_argument("--no_ema", action="store_true", help="use the model weights even if the checkpoint has EMA")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing report directory")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    args = parser.parse_intermixed_args(argv)   # key=value may follow the options
    cli.setup_logging()
    return cli.run(lambda: _run(args))


if __name__ == "__main__":
    sys.exit(main())
