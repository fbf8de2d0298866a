"""How much of DVT's theoretical saving the MindIR early-exit engine delivers on this machine.

    python benchmarks/early_exit_engine.py --preset dvt_deit_small [--images 64] [--shares 0.6 0.25 0.15]
    python benchmarks/early_exit_engine.py --mindir DIR [--images 64] [--shares ...]

On the same images it times (after compiling every batch size once):
  * the early-exit engine, with thresholds set so that the given shares of images stop at each exit;
  * every exit on every image (no early exit: what exiting at the last exit costs in DVT);
  * the last exit alone (its graph fed zero reuse tensors: the cost of that one stage).
and reports each speedup measured beside the one predicted by FLOPs, and their ratio.
``--preset`` exports a randomly initialised preset first (latency does not depend on weights).
"""
import argparse
import logging
import os
import statistics
import tempfile
import time

import numpy as np
import mindspore as ms

from dvt_ms.calibrate import search
from dvt_ms.deploy.engine import EarlyExitEngine

LOGGER = logging.getLogger("early_exit_engine")


def _export_preset(name, out_dir):
    import dvt_ms
    from dvt_ms.export.writer import IMAGENET_MEAN, IMAGENET_STD, export_model
    model = dvt_ms.create_model(name)
    preprocess = {"img_size": 224, "crop_pct": 0.875, "resize": 256, "interpolation": "bicubic",
                  "mean": IMAGENET_MEAN, "std": IMAGENET_STD}
    export_model(model, out_dir, name, preprocess)


def _thresholds_for_shares(probs, shares):
    """Thresholds that stop ``shares[k]`` of the images at exit k (the published search's rule)."""
    return search.find_thresholds(probs, np.asarray(shares, np.float32))


def _median_seconds(run, repeats):
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--preset", help="export this preset with random weights and benchmark it")
    source.add_argument("--mindir", help="an export directory (run_export.sh)")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--shares", type=float, nargs="+", default=[0.6, 0.25, 0.15],
                        help="share of images stopping at each exit")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device_target", default="CPU")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device(args.device_target)

    with tempfile.TemporaryDirectory() as scratch:
        model_dir = args.mindir
        if args.preset:
            model_dir = os.path.join(scratch, "mindir")
            _export_preset(args.preset, model_dir)
        engine = EarlyExitEngine(model_dir, max_batch=args.batch_size)
        engine.warm_up()
        size = engine.manifest["preprocess"]["img_size"]
        images = np.random.default_rng(0).standard_normal((args.images, 3, size, size)).astype(np.float32)
        batches = [images[i:i + args.batch_size] for i in range(0, args.images, args.batch_size)]
        if len(args.shares) != engine.num_exits or abs(sum(args.shares) - 1) > 1e-6:
            parser.error(f"--shares needs {engine.num_exits} values summing to 1")

        # every exit on every image: also gives the scores that set the thresholds
        never = [float(search.NEVER)] * engine.num_exits
        all_exits = _median_seconds(lambda: [engine.classify(b, never) for b in batches], args.repeats)
        probs = np.concatenate([_all_probs(engine, b) for b in batches], axis=1)
        thresholds = _thresholds_for_shares(probs, args.shares)
        exits, _ = search.assign_exits(probs, thresholds)
        shares = np.bincount(exits, minlength=engine.num_exits) / len(exits)
        early = _median_seconds(lambda: [engine.classify(b, thresholds) for b in batches], args.repeats)
        last_alone = _median_seconds(lambda: [_last_exit_alone(engine, b) for b in batches], args.repeats)

    exits_info = engine.manifest["exits"]
    cumulative = [e["cumulative_gflops"] for e in exits_info]
    expected = float(np.dot(shares, cumulative))
    rows = [("every exit (no early exit)", all_exits, cumulative[-1]),
            ("last exit alone", last_alone, exits_info[-1]["stage_gflops"]),
            ("early-exit engine", early, expected)]
    print(f"model: {engine.manifest['model']} ({args.preset and 'random weights' or model_dir}), "
          f"{args.images} images, batch {args.batch_size}, exit shares "
          + ", ".join(f"{100 * s:.0f}%" for s in shares))
    print("| run | images/s | GFLOPs/image | speedup of early exit: measured | by FLOPs | measured / FLOPs |")
    print("|---|---|---|---|---|---|")
    for name, seconds, gflops in rows:
        measured = seconds / early
        predicted = gflops / expected
        print(f"| {name} | {args.images / seconds:.1f} | {gflops:.3f} | "
              + ("- | - | - |" if name == "early-exit engine" else
                 f"{measured:.2f}x | {predicted:.2f}x | {measured / predicted:.2f} |"))


def _all_probs(engine, batch):
    """(K, B, C) scores of every exit, through the exported graphs."""
    outputs, reused, probs = None, (), []
    tensor = ms.Tensor(batch)
    for graph in engine.exits:
        outputs = graph(tensor, *reused)
        probs.append(search.softmax(outputs[0].asnumpy()))
        reused = tuple(outputs[1:])
    return np.stack(probs)


def _last_exit_alone(engine, batch):
    inputs = engine.manifest["exits"][-1]["inputs"]
    zeros = tuple(ms.Tensor(np.zeros([len(batch)] + item["shape"][1:], np.float32)) for item in inputs[1:])
    return engine.exits[-1](ms.Tensor(batch), *zeros)[0].asnumpy()


if __name__ == "__main__":
    main()
