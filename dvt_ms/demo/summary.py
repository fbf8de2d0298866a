"""The demo's summary: per-exit accuracy and cost, early exit at a few budgets, and pictures.

    python -m dvt_ms.demo budgets --eval REPORT            # the budgets the demo runs at
    python -m dvt_ms.demo summarize --eval REPORT --infer BUDGET:RESULTS.json:SUMMARY.json ... --out DIR
                                    [--data DATASET_ROOT] [--seconds ELAPSED]

Reads what the other commands wrote (run_eval.sh's report, run_infer.sh's per-image results and
summaries, the dataset's difficulty.json) and writes ``summary.md`` (printed too), ``summary.json``,
``budget_curve.png`` (accuracy vs GFLOPs: each exit alone as a point, DVT's calibrated budgets as
a curve, the budgets the MindIR engine ran as a second curve) and ``exits_grid.png`` (one row of
validation images per exit: the images that exit answered at the headline budget).

The headline budget is the cheapest engine run whose accuracy is within ``ACCURACY_TOLERANCE``
points of the last exit alone: DVT's claim is the last exit's accuracy at a fraction of its cost.
"""
import json
import logging
import os
import sys

import numpy as np
from PIL import Image

from .. import cli
from ..errors import InferenceError
from ..fileio import atomic_write_text
from ..plots import image_grid, plot_budget_curve

__all__ = ["ACCURACY_TOLERANCE", "BUDGET_FRACTIONS", "demo_budgets", "headline_run", "summarize", "main"]

LOGGER = logging.getLogger(__name__)
GRID_IMAGES_PER_EXIT = 8
# Budgets, as fractions of the last exit's cumulative GFLOPs, the demo runs the engine at.
BUDGET_FRACTIONS = (0.25, 0.35, 0.45)
# "The last exit's accuracy": DVT within this many points of the last exit alone (or better).
ACCURACY_TOLERANCE = 1.0


def _read_json(path):
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except OSError as err:
        raise InferenceError(f"cannot read {path}: {err.strerror}") from None
    except ValueError as err:
        raise InferenceError(f"{path} is not JSON: {err}") from None


def demo_budgets(eval_dir, fractions=BUDGET_FRACTIONS):
    """GFLOPs budgets at ``fractions`` of the last exit's cost; those below exit 1's cost are dropped
    (no setting is cheaper than answering every image at exit 1)."""
    per_exit = _read_json(os.path.join(eval_dir, "per_exit.json"))
    first, last = per_exit[0]["cumulative_gflops"], per_exit[-1]["cumulative_gflops"]
    return [f * last for f in fractions if f * last >= first]


def _budget_rows(runs, per_exit):
    last_accuracy, last_gflops = per_exit[-1]["validation_top1"], per_exit[-1]["cumulative_gflops"]
    rows = []
    for run in sorted(runs, key=lambda r: r["budget"]):
        summary = run["summary"]
        measured = summary.get("measured_speedup")
        rows.append({"budget_gflops": run["budget"], "exit_shares": summary["exit_shares"],
                     "accuracy": summary["accuracy"], "expected_gflops": summary["expected_gflops"],
                     "share_of_last_exit_gflops": summary["expected_gflops"] / last_gflops,
                     "last_exit_accuracy": last_accuracy,
                     "measured_speedup": measured, "predicted_speedup": summary["predicted_speedup"],
                     "speedup_ratio": measured / summary["predicted_speedup"] if measured else None,
                     "images_per_second": summary["images_per_second"]})
    return rows


def headline_run(budget_rows):
    """Index of the cheapest row within ACCURACY_TOLERANCE of the last exit, else the most accurate."""
    close = [i for i, row in enumerate(budget_rows)
             if row["accuracy"] >= row["last_exit_accuracy"] - ACCURACY_TOLERANCE]
    if close:
        return min(close, key=lambda i: budget_rows[i]["expected_gflops"])
    return max(range(len(budget_rows)), key=lambda i: budget_rows[i]["accuracy"])


def _difficulty_by_exit(records, difficulties, data_dir, num_exits):
    """Mean generator difficulty of the images each exit answered (None where it answered none)."""
    if difficulties is None:
        return None
    by_exit = [[] for _ in range(num_exits)]
    for record in records:
        key = os.path.relpath(record["path"], data_dir).replace(os.sep, "/")
        if key in difficulties:
            by_exit[record["exit"] - 1].append(difficulties[key])
    return [float(np.mean(values)) if values else None for values in by_exit]


def _markdown(per_exit, budget_rows, headline, difficulty_by_exit, seconds):
    lines = ["| exit | validation top-1 (%) | GFLOPs to exit here |", "|---|---|---|"]
    lines += [f"| {e['exit']} | {e['validation_top1']:.2f} | {e['cumulative_gflops']:.4f} |" for e in per_exit]
    lines += ["", "| budget (GFLOPs) | " + " | ".join(f"at exit {e['exit']}" for e in per_exit)
              + " | DVT accuracy (%) | last exit alone (%) | GFLOPs/image | of last exit's GFLOPs "
              "| speedup measured | speedup by FLOPs |",
              "|---|" + "---|" * (len(per_exit) + 6)]
    for row in budget_rows:
        shares = " | ".join(f"{100 * s:.0f}%" for s in row["exit_shares"])
        measured = f"{row['measured_speedup']:.2f}x" if row["measured_speedup"] else "-"
        lines.append(f"| {row['budget_gflops']:.4f} | {shares} | {row['accuracy']:.2f} | "
                     f"{row['last_exit_accuracy']:.2f} | {row['expected_gflops']:.4f} | "
                     f"{100 * row['share_of_last_exit_gflops']:.0f}% | {measured} | "
                     f"{row['predicted_speedup']:.2f}x |")
    row = budget_rows[headline]
    lines += ["", f"DVT at {row['budget_gflops']:.4f} GFLOPs: {row['accuracy']:.2f}% "
              f"({row['accuracy'] - row['last_exit_accuracy']:+.2f} points vs the last exit alone) at "
              f"{100 * row['share_of_last_exit_gflops']:.0f}% of the last exit's GFLOPs."]
    if row["speedup_ratio"] is not None:
        lines.append(f"MindIR engine: measured speedup {row['measured_speedup']:.2f}x, "
                     f"{row['speedup_ratio']:.2f} of the FLOPs prediction ({row['predicted_speedup']:.2f}x).")
    if difficulty_by_exit is not None:
        means = ", ".join(f"exit {k + 1}: {'-' if d is None else f'{d:.2f}'}"
                          for k, d in enumerate(difficulty_by_exit))
        lines.append(f"Mean difficulty (0 easy .. 1 hard) of the images each exit answered: {means}.")
    if seconds is not None:
        lines.append(f"Demo run time: {seconds:.0f} s.")
    lines += ["", "Speedups are over running every image to the last exit (which needs every stage), "
              "with the MindIR early-exit engine on this machine."]
    return "\n".join(lines) + "\n"


def plot_demo_budget_curve(path, per_exit, calibrated_rows, budget_rows):
    """Accuracy vs GFLOPs: each exit alone as a point, DVT's calibrated budgets (offline, on the
    validation images) as a curve and the MindIR engine's runs as a second curve through the budgets."""
    curves = {"DVT, calibrated budgets (validation)":
              ([r["validation_gflops"] for r in calibrated_rows], [r["validation_accuracy"] for r in calibrated_rows]),
              "DVT, MindIR early-exit engine": ([r["expected_gflops"] for r in budget_rows],
                                                [r["accuracy"] for r in budget_rows])}
    points = {f"exit {e['exit']} alone": (e["cumulative_gflops"], e["validation_top1"]) for e in per_exit}
    return plot_budget_curve(path, curves, points, title="Demo DVT: accuracy vs GFLOPs per image")


def plot_exit_grid(path, records, num_exits, difficulties=None, data_dir=None):
    """Up to GRID_IMAGES_PER_EXIT images answered at each exit, one row per exit."""
    images, captions, colours = [], [], []
    for k in range(1, num_exits + 1):
        answered = [r for r in records if r["exit"] == k]
        # records run class by class: take them evenly spaced to show every class
        answered = answered[::max(1, len(answered) // GRID_IMAGES_PER_EXIT)][:GRID_IMAGES_PER_EXIT]
        for record in answered:
            with Image.open(record["path"]) as image:
                images.append(image.convert("RGB"))
            right = record.get("correct")
            caption = f"exit {k}: {record['class']}"
            if difficulties is not None:
                key = os.path.relpath(record["path"], data_dir).replace(os.sep, "/")
                if key in difficulties:
                    caption += f"\ndifficulty {difficulties[key]:.2f}"
            captions.append(caption)
            colours.append((20, 130, 40) if right else (200, 30, 30))
    if not images:
        raise ValueError("no records to show in the exit grid")
    return image_grid(path, images, captions, columns=GRID_IMAGES_PER_EXIT, cell_size=96, caption_colors=colours)


def summarize(eval_dir, infer_runs, out_dir, data_dir=None, seconds=None):
    """Write the demo summary and pictures; return the Markdown summary.

    ``infer_runs``: dicts with ``budget`` (GFLOPs), ``summary`` and ``records`` (run_infer.sh's
    outputs). ``data_dir``: the dataset root, for the images' difficulty (optional).
    """
    per_exit = _read_json(os.path.join(eval_dir, "per_exit.json"))
    calibrated_rows = _read_json(os.path.join(eval_dir, "budget_curve.json"))
    budget_rows = _budget_rows(infer_runs, per_exit)
    headline = headline_run(budget_rows)
    records = sorted(infer_runs, key=lambda r: r["budget"])[headline]["records"]
    difficulties = None
    if data_dir is not None and os.path.isfile(os.path.join(data_dir, "difficulty.json")):
        difficulties = _read_json(os.path.join(data_dir, "difficulty.json"))
    difficulty_by_exit = _difficulty_by_exit(records, difficulties, data_dir, len(per_exit))
    table = _markdown(per_exit, budget_rows, headline, difficulty_by_exit, seconds)

    os.makedirs(out_dir, exist_ok=True)
    plot_demo_budget_curve(os.path.join(out_dir, "budget_curve.png"), per_exit, calibrated_rows, budget_rows)
    plot_exit_grid(os.path.join(out_dir, "exits_grid.png"), records, len(per_exit), difficulties, data_dir)
    atomic_write_text(os.path.join(out_dir, "summary.json"), json.dumps(
        {"per_exit": per_exit, "budgets": budget_rows, "headline_budget": budget_rows[headline],
         "mean_difficulty_by_exit": difficulty_by_exit, "seconds": seconds}, indent=1))
    atomic_write_text(os.path.join(out_dir, "summary.md"), table)
    return table


def main(argv=None):
    parser = cli.argument_parser("dvt_ms.demo", __doc__, paragraphs=1)
    commands = parser.add_subparsers(dest="command", required=True)
    budgets = commands.add_parser("budgets", help="print the budgets (GFLOPs per image) the demo runs at")
    budgets.add_argument("--eval", required=True, help="report directory of run_eval.sh")
    summary = commands.add_parser("summarize", help="write and print the summary")
    summary.add_argument("--eval", required=True, help="report directory of run_eval.sh")
    summary.add_argument("--infer", nargs="+", required=True,
                         help="BUDGET:RESULTS.json:SUMMARY.json of each run_infer.sh run")
    summary.add_argument("--out", required=True)
    summary.add_argument("--data", help="dataset root (its difficulty.json labels the pictures)")
    summary.add_argument("--seconds", type=float, help="demo run time so far, for the summary")
    args = parser.parse_args(argv)
    cli.setup_logging(timestamps=False)
    return cli.run(lambda: _run(args))


def _run(args):
    if args.command == "budgets":
        print(" ".join(f"{b:.6f}" for b in demo_budgets(args.eval)))
        return
    runs = []
    for item in args.infer:
        try:
            budget, results, summary_path = item.split(":")
            budget = float(budget)
        except ValueError:
            raise InferenceError(f"--infer {item!r}: expected BUDGET:RESULTS.json:SUMMARY.json") from None
        runs.append({"budget": budget, "records": _read_json(results), "summary": _read_json(summary_path)})
    print(summarize(args.eval, runs, args.out, data_dir=args.data, seconds=args.seconds))


if __name__ == "__main__":
    sys.exit(main())
