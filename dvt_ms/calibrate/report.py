"""The calibration report: per-exit accuracy, the 59 published budgets, deployable thresholds.

Written into a report directory all at once:
  per_exit.json       top-1 of each exit (calibration and validation) and its GFLOPs
  budget_curve.json   the 59 published budgets: thresholds found on calibration, their accuracy
                      and GFLOPs on both splits and the share of images at each exit
  budget_curve.md     the same as a Markdown table
  budget_curve.png    validation accuracy vs GFLOPs, with each single exit as a point
  thresholds.yaml     the table for deployment (run_export.sh / run_infer.sh --budget): the contract's
                      thresholds document (dvt_ms.contract.thresholds), its default chosen by the one
                      selection rule, which images calibrated it and the digest of the weights

Calibration and validation come in as ``search.ExitScores`` (or softmax scores) with their labels.
"""
import json
import os

import numpy as np

from ..contract.thresholds import THRESHOLDS_NAME, dump_thresholds, thresholds_document
from ..fileio import OutputFolderKind, staged_directory
from ..plots import plot_budget_curve
from . import search

__all__ = ["REPORT_FOLDER", "calibrate", "write_report"]

# What run_eval.sh recognises as its own report folder (the only kind of folder --overwrite replaces).
REPORT_FOLDER = OutputFolderKind("a calibration report", THRESHOLDS_NAME,
                                 ("per_exit.json", "budget_curve.json", "budget_curve.md", "budget_curve.png",
                                  THRESHOLDS_NAME))


def calibrate(calib, calib_targets, val, val_targets, cumulative_gflops):
    """The 59 published budgets: thresholds from calibration (``search.budget_curve``), scored on
    both splits."""
    num_exits = len(cumulative_gflops)
    rows = []
    for point in search.budget_curve(calib, calib_targets, cumulative_gflops):
        thresholds = point["thresholds"]
        val_accuracy, val_gflops = search.evaluate(val, val_targets, cumulative_gflops, thresholds)
        exits, _ = search.assign_exits(val, thresholds)
        shares = np.bincount(exits, minlength=num_exits) / len(exits)
        rows.append({"budget_index": int(point["budget_index"]), "exit_thresholds": [float(t) for t in thresholds],
                     "calibration_accuracy": float(point["accuracy"]), "calibration_gflops": float(point["gflops"]),
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


def write_report(out_dir, model_name, flops, calib, val, rows, digest, overwrite=False, calibration=None):
    """Write the report files (see the module docstring) into ``out_dir`` all at once.

    ``calib`` and ``val`` are each exit's top-1 (%); ``digest`` (``dvt_ms.contract.digest``) binds
    the thresholds to the weights calibrated; ``calibration`` (a mapping: images, source) says
    what the thresholds were calibrated on."""
    num_exits = len(flops)
    cumulative = [f["cumulative_gflops"] for f in flops]
    per_exit = [{"exit": k + 1, "stage_gflops": flops[k]["stage_gflops"], "cumulative_gflops": cumulative[k],
                 "calibration_top1": float(calib[k]), "validation_top1": float(val[k])} for k in range(num_exits)]
    thresholds = thresholds_document(model_name, cumulative, rows, digest, calibration)
    with staged_directory(out_dir, REPORT_FOLDER, overwrite) as staging:
        def path(name):
            return os.path.join(staging, name)
        with open(path("per_exit.json"), "w", encoding="utf-8") as handle:
            json.dump(per_exit, handle, indent=1)
        with open(path("budget_curve.json"), "w", encoding="utf-8") as handle:
            json.dump(rows, handle, indent=1)
        with open(path("budget_curve.md"), "w", encoding="utf-8") as handle:
            handle.write(_markdown(rows, num_exits))
        with open(path(THRESHOLDS_NAME), "w", encoding="utf-8") as handle:
            handle.write(dump_thresholds(thresholds))
        curves = {"DVT, thresholds from calibration (validation)":
                  ([r["validation_gflops"] for r in rows], [r["validation_accuracy"] for r in rows])}
        points = {f"exit {k + 1} alone": (cumulative[k], float(val[k])) for k in range(num_exits)}
        plot_budget_curve(path("budget_curve.png"), curves, points, title=f"{model_name}: accuracy vs GFLOPs")
    return per_exit, thresholds
