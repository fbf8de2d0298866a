"""Evaluate every exit and calibrate early-exit thresholds (the published budgeted-batch search).

    python -m dvt_ms.evaluate CONFIG --ckpt X.ckpt --data DIR [--out REPORT] [--calib_size N] [key=value ...]

Runs every exit on a calibration split (held-out training images) and on the validation split,
then writes a report directory:
  per_exit.json       top-1 of each exit (calibration and validation) and its GFLOPs
  budget_curve.json   the 59 published budgets: thresholds found on calibration, their accuracy
                      and GFLOPs on both splits and the share of images at each exit
  budget_curve.md     the same as a Markdown table
  budget_curve.png    validation accuracy vs GFLOPs, with each single exit as a point
  thresholds.yaml     the table for deployment (run_export.sh / run_infer.sh --budget), and as
                      default the setting with the best calibration accuracy
"""
import argparse
import json
import logging
import os
import sys

import numpy as np
import yaml

from . import adaptive
from .fileio import staged_directory

__all__ = ["exit_probabilities", "calibrate", "write_report", "main"]

LOGGER = logging.getLogger(__name__)


def exit_probabilities(model, loader, description):
    """Softmax scores (K, N, C) of every exit and the labels (N,) over ``loader``."""
    model.set_train(False)
    probs, labels = [], []
    for step, (images, targets) in enumerate(loader.create_tuple_iterator(num_epochs=1)):
        probs.append(np.stack([adaptive.softmax(t.asnumpy()) for t in model(images)]))
        labels.append(targets.asnumpy())
        if step % 20 == 0:
            LOGGER.info("%s: %d images", description, sum(len(x) for x in labels))
    if not labels:
        raise ValueError(f"{description}: no images")
    return np.concatenate(probs, axis=1), np.concatenate(labels).astype(np.int64)


def calibrate(calib_probs, calib_targets, val_probs, val_targets, cumulative_gflops):
    """The 59 published budgets: thresholds from calibration, scored on both splits."""
    num_exits = calib_probs.shape[0]
    rows = []
    for budget_index in adaptive.BUDGET_INDICES:
        fractions = adaptive.exit_fractions(budget_index, num_exits)
        thresholds = adaptive.find_thresholds(calib_probs, fractions)
        calib_accuracy, calib_gflops = adaptive.evaluate(calib_probs, calib_targets, cumulative_gflops, thresholds)
        val_accuracy, val_gflops = adaptive.evaluate(val_probs, val_targets, cumulative_gflops, thresholds)
        exits, _ = adaptive.assign_exits(val_probs, thresholds)
        shares = np.bincount(exits, minlength=num_exits) / len(exits)
        rows.append({"budget_index": int(budget_index), "exit_thresholds": [float(t) for t in thresholds],
                     "calibration_accuracy": float(calib_accuracy), "calibration_gflops": float(calib_gflops),
                     "validation_accuracy": float(val_accuracy), "validation_gflops": float(val_gflops),
                     "validation_exit_shares": [float(s) for s in shares]})
    return rows


def _markdown(rows, num_exits):
    header = ("| budget | thresholds | calib. acc. (%) | calib. GFLOPs | val. acc. (%) | val. GFLOPs | "
              + " | ".join(f"exit {k + 1} share" for k in range(num_exits)) + " |")
    lines = [header, "|" + "---|" * (6 + num_exits)]
    for row in rows:
        thresholds = ", ".join(f"{t:.4g}" for t in row["exit_thresholds"])
        shares = " | ".join(f"{100 * s:.1f}%" for s in row["validation_exit_shares"])
        lines.append(f"| {row['budget_index']} | {thresholds} | {row['calibration_accuracy']:.2f} | "
                     f"{row['calibration_gflops']:.4f} | {row['validation_accuracy']:.2f} | "
                     f"{row['validation_gflops']:.4f} | {shares} |")
    return "\n".join(lines) + "\n"


def default_setting(rows):
    """The best calibration accuracy, the cheapest among equals."""
    return max(rows, key=lambda row: (row["calibration_accuracy"], -row["calibration_gflops"]))


def write_report(out_dir, model_name, flops, calib, val, rows, overwrite=False):
    """Write the report files (see the module docstring) into ``out_dir`` all at once."""
    from .plots import plot_budget_curve
    num_exits = len(flops)
    cumulative = [f["cumulative_gflops"] for f in flops]
    per_exit = [{"exit": k + 1, "stage_gflops": flops[k]["stage_gflops"], "cumulative_gflops": cumulative[k],
                 "calibration_top1": float(calib[k]), "validation_top1": float(val[k])} for k in range(num_exits)]
    chosen = default_setting(rows)
    thresholds = {"model": model_name, "num_exits": num_exits, "exit_gflops": cumulative,
                  "exit_thresholds": chosen["exit_thresholds"], "default_budget_index": chosen["budget_index"],
                  "budgets": rows}
    with staged_directory(out_dir, overwrite) as staging:
        def path(name):
            return os.path.join(staging, name)
        with open(path("per_exit.json"), "w", encoding="utf-8") as handle:
            json.dump(per_exit, handle, indent=1)
        with open(path("budget_curve.json"), "w", encoding="utf-8") as handle:
            json.dump(rows, handle, indent=1)
        with open(path("budget_curve.md"), "w", encoding="utf-8") as handle:
            handle.write(_markdown(rows, num_exits))
        with open(path("thresholds.yaml"), "w", encoding="utf-8") as handle:
            yaml.safe_dump(thresholds, handle, sort_keys=False)
        curves = {"DVT, thresholds from calibration (validation)":
                  ([r["validation_gflops"] for r in rows], [r["validation_accuracy"] for r in rows])}
        points = {f"exit {k + 1} alone": (cumulative[k], float(val[k])) for k in range(num_exits)}
        plot_budget_curve(path("budget_curve.png"), curves, points, title=f"{model_name}: accuracy vs GFLOPs")
    return per_exit, thresholds


def _loader(config, split, size, img_size):
    """Eval-transformed batches of ``split``: all of it, or ``size`` images drawn by the config's seed."""
    from .data import make_loader, open_dataset
    data = open_dataset(config, split, config.num_workers)
    if size is None or size >= data.num_samples:
        indices = np.arange(data.num_samples)
    else:
        indices = np.sort(np.random.default_rng(config.seed).choice(data.num_samples, size, replace=False))
    loader = make_loader(data, indices, config, img_size, data.num_classes, is_training=False,
                         num_workers=config.num_workers)
    return loader, data


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
                        help="held-out images for calibration (the authors used 50000)")
    parser.add_argument("--no_ema", action="store_true", help="use the model weights even if the checkpoint has EMA")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing report directory")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    args = parser.parse_intermixed_args(argv)   # key=value may follow the options
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")

    import mindspore as ms
    import dvt_ms
    from .checkpoints import CheckpointError, load_model_weights
    from .cli_utils import parse_overrides
    from .config import ConfigError, load_config, model_overrides
    from .data import DataError
    from .flops import model_flops
    from .runtime import resolve_device

    try:
        overrides = parse_overrides(args.overrides)
        if args.data:
            overrides["data_dir"] = args.data
        config = load_config(args.config, overrides)
        if not config.data_dir:
            raise ConfigError("no dataset: pass --data DIR or set data_dir")
        ms.set_context(mode=ms.GRAPH_MODE)
        ms.set_device(resolve_device(config.device_target))
        model = dvt_ms.create_model(config.model, **model_overrides(config))
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
        out_dir = args.out or os.path.join(config.output_dir, "eval")
        per_exit, thresholds = write_report(out_dir, config.model, flops,
                                            adaptive.anytime_accuracy(calib_probs, calib_targets),
                                            adaptive.anytime_accuracy(val_probs, val_targets), rows, args.overwrite)
    except (CheckpointError, ConfigError, DataError, ValueError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for row in per_exit:
        print(f"exit {row['exit']}: top-1 {row['validation_top1']:.2f}% (calibration {row['calibration_top1']:.2f}%), "
              f"{row['cumulative_gflops']:.3f} GFLOPs")
    chosen = rows[thresholds["default_budget_index"] - 1]
    print(f"default thresholds {['%.4g' % t for t in thresholds['exit_thresholds']]}: validation "
          f"{chosen['validation_accuracy']:.2f}% at {chosen['validation_gflops']:.3f} GFLOPs per image")
    print(f"report: {out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
