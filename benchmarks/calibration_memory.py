"""Calibration memory and time: every exit's softmax kept (before) vs reduced per batch (after).

    python benchmarks/calibration_memory.py [--images 50000] [--classes 1000] [--batch 250]

Feeds synthetic logits (no model, no images) for a calibration and a validation set of
``--images`` each, 3 exits, ``--classes`` classes, batch by batch, into
  before: the softmax of every batch kept, concatenated to (K, N, C) per split, then the report's
          59-budget search on those scores (what run_eval.sh did);
  after:  each batch reduced at once to (confidence, prediction) per exit (ExitScores), then the
          same search on those.
Each runs in a fresh process; it reports peak RSS (resource.getrusage) and the Python-heap peak of
numpy arrays (tracemalloc), the time to score and to search, and whether the 59 rows (thresholds,
accuracies, GFLOPs, exit shares) are identical.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time
import tracemalloc

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from dvt_ms import cli  # noqa: E402
from dvt_ms.calibrate import search  # noqa: E402
from dvt_ms.contract.exit_rule import softmax  # noqa: E402
from dvt_ms.calibrate.report import calibrate  # noqa: E402

EXITS = 3
GFLOPS = [1.14, 3.66, 8.89]


def batches(images, classes, batch, seed):
    """Synthetic per-exit logits and labels: later exits more often right and more confident."""
    for start in range(0, images, batch):
        rng = np.random.default_rng([seed, start])
        size = min(batch, images - start)
        labels = rng.integers(0, classes, size)
        easy = rng.random(size)
        logits = []
        for k in range(EXITS):
            exit_logits = rng.normal(0.0, 1.0, (size, classes)).astype(np.float32)
            right = easy < 0.45 + 0.15 * k
            exit_logits[np.arange(size)[right], labels[right]] += (2.0 + 1.5 * k) * (1.0 + easy[right])
            logits.append(exit_logits)
        yield logits, labels


def score(mode, images, classes, batch, seed):
    parts, labels = [], []
    for logits, batch_labels in batches(images, classes, batch, seed):
        if mode == "before":
            parts.append(np.stack([softmax(exit_logits) for exit_logits in logits]))
        else:
            parts.append(search.exit_scores_from_logits(logits))
        labels.append(batch_labels)
    scores = np.concatenate(parts, axis=1) if mode == "before" else search.concatenate_scores(parts)
    return scores, np.concatenate(labels)


def run(mode, images, classes, batch, out):
    tracemalloc.start()
    started = time.perf_counter()
    calib, calib_labels = score(mode, images, classes, batch, seed=1)
    val, val_labels = score(mode, images, classes, batch, seed=2)
    scored = time.perf_counter()
    rows = calibrate(calib, calib_labels, val, val_labels, GFLOPS)
    searched = time.perf_counter()
    _, heap_peak = tracemalloc.get_traced_memory()
    with open(out, "w") as handle:
        json.dump({"rows": rows, "score_s": scored - started, "search_s": searched - scored,
                   "heap_peak_mb": heap_peak / 2**20,
                   "rss_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}, handle)


def main(argv=None):
    parser = cli.argument_parser("benchmarks/calibration_memory.py", __doc__)
    parser.add_argument("--images", type=int, default=50000, help="images per split (calibration, validation)")
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=250)
    parser.add_argument("--run", choices=("before", "after"), help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.run:
        return run(args.run, args.images, args.classes, args.batch, args.result)
    results = {}
    for mode in ("before", "after"):
        out = f"/tmp/dvt-calibration-memory-{os.getpid()}-{mode}.json"
        subprocess.run([sys.executable, __file__, "--run", mode, "--result", out, "--images", str(args.images),
                        "--classes", str(args.classes), "--batch", str(args.batch)], check=True)
        with open(out) as handle:
            results[mode] = json.load(handle)
        os.remove(out)
    print(f"2 splits x {args.images} images, {EXITS} exits, {args.classes} classes, batches of {args.batch}; "
          "59 published budgets")
    print("| path | peak RSS (MB) | numpy heap peak (MB) | scoring (s) | threshold search (s) |")
    print("|---|---|---|---|---|")
    for mode, label in (("before", "before: softmax kept (K, N, C)"), ("after", "after: (confidence, prediction)")):
        r = results[mode]
        print(f"| {label} | {r['rss_peak_mb']:.0f} | {r['heap_peak_mb']:.0f} | {r['score_s']:.1f} | "
              f"{r['search_s']:.1f} |")
    identical = results["before"]["rows"] == results["after"]["rows"]
    print(f"59 rows identical (thresholds, accuracies, GFLOPs, exit shares): {'yes' if identical else 'NO'}")
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
