"""What the engine's batch size does to the early-exit speedup, on real images of an exported model.

    python benchmarks/engine_batch_size.py --mindir OUT/mindir OUT/data/val [--batch_sizes 64 128 256 512 1024]
                                           [--budget_fractions 0.25 0.35 0.45]

For each batch size (compiled once), and each budget (a fraction of the last exit's GFLOPs, the row
``--budget`` picks), the images run as ``run_infer.sh --compare`` runs them: with early exit, then
every exit on the same batches. Printed: the measured speedup over every exit, the FLOPs-predicted
one and their ratio, and the batch size ``choose_batch_size`` picks for these images (what
``run_infer.sh`` uses without ``--batch_size``).
"""
import argparse
import logging

import mindspore as ms

from dvt_ms.contract.manifest import load_manifest
from dvt_ms.contract.thresholds import select_row
from dvt_ms.deploy.engine import EarlyExitEngine, choose_batch_size
from dvt_ms.deploy.infer import collect_images, run_inference


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mindir", required=True, help="an export directory with its thresholds")
    parser.add_argument("images", nargs="+", help="image files or folders (as run_infer.sh takes them)")
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[64, 128, 256, 512, 1024])
    parser.add_argument("--budget_fractions", type=float, nargs="+", default=[0.25, 0.35, 0.45])
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    paths, _, _ = collect_images(args.images)
    print(f"{len(paths)} images; the engine's own choice: batches of "
          f"{choose_batch_size(load_manifest(args.mindir), len(paths))}")
    print("| batch size | " + " | ".join(f"budget {100 * f:g}%: measured / predicted = ratio"
                                          for f in args.budget_fractions) + " |")
    print("|---|" + "---|" * len(args.budget_fractions))
    for batch_size in args.batch_sizes:
        engine = EarlyExitEngine(args.mindir, max_batch=batch_size)
        engine.warm_up()
        rows = engine.manifest["thresholds"]["budgets"]
        cells = []
        for fraction in args.budget_fractions:
            thresholds = select_row(rows, fraction * engine.cumulative_gflops[-1], source=args.mindir)["exit_thresholds"]
            _, summary = run_inference(engine, paths, None, thresholds, compare_all_exits=True)
            measured, predicted = summary["measured_speedup"], summary["predicted_speedup"]
            cells.append(f"{measured:.2f}x / {predicted:.2f}x = {measured / predicted:.2f}")
        print(f"| {batch_size} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
