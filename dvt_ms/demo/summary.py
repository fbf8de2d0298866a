"""The demo's summary: per-exit accuracy and cost, early exit at a few budgets, and pictures.

    python -m dvt_ms.demo budgets --eval REPORT            # the budgets the demo runs at
    python -m dvt_ms.demo summarize --eval REPORT --infer BUDGET:RESULTS.json:SUMMARY.json ... --out DIR

Reads what the other commands wrote (run_eval.sh's report, run_infer.sh's per-image results and
summaries) and writes ``summary.md`` (printed too), ``summary.json``, ``budget_curve.png`` (copied
from the report) and ``exits_grid.png``: validation images labelled with the exit that answered.
"""
import argparse
import json
import logging
import os
import shutil
import sys

from PIL import Image

from .. import cli
from ..errors import InferenceError
from ..fileio import atomic_write_text
from ..plots import image_grid

__all__ = ["demo_budgets", "summarize", "main"]

LOGGER = logging.getLogger(__name__)
GRID_IMAGES_PER_EXIT = 8


def _read_json(path):
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except OSError as err:
        raise InferenceError(f"cannot read {path}: {err.strerror}") from None
    except ValueError as err:
        raise InferenceError(f"{path} is not JSON: {err}") from None


def _budget_rows(runs, last_exit_accuracy):
    rows = []
    for run in runs:
        summary = run["summary"]
        rows.append({"budget_gflops": run["budget"], "exit_shares": summary["exit_shares"],
                     "accuracy": summary["accuracy"], "expected_gflops": summary["expected_gflops"],
                     "last_exit_accuracy": last_exit_accuracy,
                     "measured_speedup": summary.get("measured_speedup"),
                     "predicted_speedup": summary["predicted_speedup"],
                     "images_per_second": summary["images_per_second"]})
    return rows


def _markdown(per_exit, budget_rows):
    lines = ["| exit | validation top-1 (%) | GFLOPs to exit here |", "|---|---|---|"]
    lines += [f"| {e['exit']} | {e['validation_top1']:.2f} | {e['cumulative_gflops']:.4f} |" for e in per_exit]
    lines += ["", "| budget (GFLOPs) | " + " | ".join(f"at exit {e['exit']}" for e in per_exit)
              + " | DVT accuracy (%) | last exit alone (%) | GFLOPs/image | speedup measured | speedup by FLOPs |",
              "|---|" + "---|" * (len(per_exit) + 5)]
    for row in budget_rows:
        shares = " | ".join(f"{100 * s:.0f}%" for s in row["exit_shares"])
        measured = f"{row['measured_speedup']:.2f}x" if row["measured_speedup"] else "-"
        lines.append(f"| {row['budget_gflops']:.4f} | {shares} | {row['accuracy']:.2f} | "
                     f"{row['last_exit_accuracy']:.2f} | {row['expected_gflops']:.4f} | {measured} | "
                     f"{row['predicted_speedup']:.2f}x |")
    lines.append("")
    lines.append("Speedups are over running every image to the last exit (which needs every stage), "
                 "with the MindIR early-exit engine on this machine.")
    return "\n".join(lines) + "\n"


def _exit_grid(path, records, num_exits):
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
            captions.append(f"exit {k}\n{record['class']} {'ok' if right else 'wrong'}")
            colours.append((20, 130, 40) if right else (200, 30, 30))
    if images:
        image_grid(path, images, captions, columns=GRID_IMAGES_PER_EXIT, cell_size=96, caption_colors=colours)


def demo_budgets(eval_dir, fractions=(0.25, 0.5, 0.75)):
    """GFLOPs budgets a quarter, half and three quarters of the way from exit 1's cost to the last's."""
    per_exit = _read_json(os.path.join(eval_dir, "per_exit.json"))
    first, last = per_exit[0]["cumulative_gflops"], per_exit[-1]["cumulative_gflops"]
    return [first + f * (last - first) for f in fractions]


def summarize(eval_dir, infer_runs, out_dir):
    """Write the demo summary; ``infer_runs`` is a list of dicts with budget, summary, records."""
    per_exit = _read_json(os.path.join(eval_dir, "per_exit.json"))
    budget_rows = _budget_rows(infer_runs, per_exit[-1]["validation_top1"])
    table = _markdown(per_exit, budget_rows)
    os.makedirs(out_dir, exist_ok=True)
    atomic_write_text(os.path.join(out_dir, "summary.md"), table)
    atomic_write_text(os.path.join(out_dir, "summary.json"),
                      json.dumps({"per_exit": per_exit, "budgets": budget_rows}, indent=1))
    shutil.copyfile(os.path.join(eval_dir, "budget_curve.png"), os.path.join(out_dir, "budget_curve.png"))
    middle = infer_runs[len(infer_runs) // 2]
    _exit_grid(os.path.join(out_dir, "exits_grid.png"), middle["records"], len(per_exit))
    return table


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m dvt_ms.demo", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    budgets = commands.add_parser("budgets", help="print the budgets (GFLOPs per image) the demo runs at")
    budgets.add_argument("--eval", required=True, help="report directory of run_eval.sh")
    summary = commands.add_parser("summarize", help="write and print the summary")
    summary.add_argument("--eval", required=True, help="report directory of run_eval.sh")
    summary.add_argument("--infer", nargs="+", required=True,
                         help="BUDGET:RESULTS.json:SUMMARY.json of each run_infer.sh run")
    summary.add_argument("--out", required=True)
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
    print(summarize(args.eval, runs, args.out))


if __name__ == "__main__":
    sys.exit(main())
