"""How much of DVT's theoretical saving the MindIR early-exit engine delivers on this machine.

    python benchmarks/early_exit_engine.py --preset dvt_deit_small [--images 64] [--shares 0.6 0.25 0.15]
    python benchmarks/early_exit_engine.py --config configs/demo.yaml [key=value ...]   # a config's model, random weights
    python benchmarks/early_exit_engine.py --mindir DIR [...]                 # an export directory

On the same images it times the model part (after compiling every batch size once):
  * the early-exit engine, with thresholds set so that the given shares of images stop at each exit;
  * every exit on every image (no early exit: what exiting at the last exit costs in DVT);
  * the last exit alone (its graph fed zero reuse tensors: the cost of that one stage);
  * each exit on a full batch, which gives the speedup the stages' own times allow (what an engine
    without any overhead would measure; the gap to the FLOPs prediction is the model's);
and reports each speedup measured beside the one predicted by FLOPs, and their ratio. Apart from
that it times preprocessing (decode, resize, crop, normalise) of JPEG files of --image_size, and
batch-1 latency (streaming; p50/p95 overall and per exit).
``--preset`` and ``--config`` export a randomly initialised model first (latency does not depend on
the weights). With ``--preset`` and ``--torch_python``, the exported graphs' full cascade (every exit,
batch ``--batch_size``) is set against the PyTorch reference of the authors' code at the same batch
(benchmarks/torch_reference.py, timed in a subprocess while MindSpore is idle).
"""
import json
import logging
import os
import statistics
import subprocess
import tempfile
import time

import numpy as np
import mindspore as ms

from dvt_ms import cli
from dvt_ms.calibrate import search
from dvt_ms.contract.exit_rule import softmax
from dvt_ms.deploy.engine import EarlyExitEngine
from dvt_ms.deploy.preprocess import Preprocessor
from dvt_ms.device import use_device

LOGGER = logging.getLogger("early_exit_engine")


def _export_random(out_dir, graph_target, preset=None, config_path=None, overrides=()):
    import dvt_ms
    from dvt_ms.config import load_config
    from dvt_ms.cli import parse_overrides
    from dvt_ms.data.transforms import run_preprocessing
    from dvt_ms.export.writer import export_model
    overrides = {**parse_overrides(list(overrides)), **({} if config_path else {"model": preset})}
    config = load_config(config_path, overrides or None, command="export")
    model = dvt_ms.DVT(config.arch)
    export_model(model, out_dir, config.model, run_preprocessing(config, model.config.img_size),
                 graph_target=graph_target)   # as run_export.sh makes them: for the device they run on


def _median_seconds(run, repeats):
    return _interleaved_medians({"run": run}, repeats)["run"]


def _interleaved_medians(runs, repeats):
    """Median seconds of each of ``runs`` (name -> callable), taking turns so that a change in
    the machine's load affects them alike."""
    samples = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in samples.items()}


def _percentiles(seconds):
    p50, p95 = np.percentile(1000.0 * np.asarray(seconds), [50, 95])
    return f"{p50:.2f} | {p95:.2f}"


def _write_jpegs(folder, count, size):
    """``count`` photo-like JPEG files (smooth colour fields, edges, noise) of ``size`` (W, H)."""
    from PIL import Image
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:size[1], 0:size[0]]
    paths = []
    for index in range(count):
        phase = rng.uniform(0, 6, 3)
        pixels = np.stack([128 + 90 * np.sin(x / (9 + 3 * c) + p) * np.cos(y / 13) for c, p in enumerate(phase)], -1)
        pixels += rng.normal(0, 12, pixels.shape)
        path = os.path.join(folder, f"{index:04d}.jpg")
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


def main():
    parser = cli.argument_parser("benchmarks/early_exit_engine.py", __doc__)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--preset", help="export this preset with random weights and benchmark it")
    source.add_argument("--config", help="export this config's model with random weights (e.g. configs/demo.yaml)")
    source.add_argument("--mindir", help="an export directory (run_export.sh)")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=None,
                        help="images per exit call (default: the engine's choice for --images, as run_infer.sh)")
    parser.add_argument("--shares", type=float, nargs="+", default=[0.6, 0.25, 0.15],
                        help="share of images stopping at each exit")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--streaming_images", type=int, default=32,
                        help="images classified one at a time for the batch-1 latency (0: skip)")
    parser.add_argument("--image_size", type=int, nargs=2, default=[500, 375], metavar=("W", "H"),
                        help="size of the JPEG files whose preprocessing is timed")
    parser.add_argument("--device_target", default="CPU", help="CPU, GPU, Ascend or auto")
    parser.add_argument("--torch_python", help="a Python with torch (with --preset): the authors' cascade alongside")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides (with --config/--preset)")
    args = parser.parse_intermixed_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.torch_python and args.preset and args.batch_size is None:
        args.batch_size = 16
    # before MindSpore's runtime starts: its idle threads would slow the PyTorch reference
    reference = None
    if args.torch_python and args.preset:
        command = [args.torch_python, os.path.join(os.path.dirname(os.path.abspath(__file__)), "torch_reference.py"),
                   "--model", args.preset, "--batch", str(args.batch_size), "--repeats", str(args.repeats)]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode:
            LOGGER.warning("torch reference failed: %s", result.stderr.strip()[-300:])
        else:
            reference = json.loads(result.stdout.strip().splitlines()[-1])["ms_per_image"]
    device = use_device(args.device_target).device

    with tempfile.TemporaryDirectory() as scratch:
        model_dir = args.mindir
        if not model_dir:
            model_dir = os.path.join(scratch, "mindir")
            _export_random(model_dir, device, args.preset, args.config, args.overrides)
        engine = EarlyExitEngine(model_dir, max_batch=args.batch_size, num_images=args.images)
        args.batch_size = engine.max_batch
        if len(args.shares) != engine.num_exits or abs(sum(args.shares) - 1) > 1e-6:
            parser.error(f"--shares needs {engine.num_exits} values summing to 1")
        begin = time.perf_counter()
        engine.warm_up()
        LOGGER.info("compiled batch sizes %s in %.1fs", engine.buckets, time.perf_counter() - begin)

        preprocess = Preprocessor(engine.manifest["preprocess"])
        files = _write_jpegs(scratch, min(args.images, 32), tuple(args.image_size))
        preprocess_seconds = []
        for path in files:
            start = time.perf_counter()
            preprocess(path)
            preprocess_seconds.append(time.perf_counter() - start)

        size = engine.manifest["preprocess"]["img_size"]
        images = np.random.default_rng(0).standard_normal((args.images, 3, size, size)).astype(np.float32)
        batches = [images[i:i + args.batch_size] for i in range(0, args.images, args.batch_size)]
        # every exit on every image gives the scores that set the thresholds
        probs = softmax(np.concatenate([engine.every_exit(b) for b in batches], axis=1))
        thresholds = search.find_thresholds(probs, np.asarray(args.shares, np.float32))
        exits, _ = search.assign_exits(probs, thresholds)
        shares = np.bincount(exits, minlength=engine.num_exits) / len(exits)

        def early_exit():
            run = engine.run(thresholds)
            for batch in batches:
                run.push(batch)
            run.finish()
        _last_exit_alone(engine, batches[-1])      # makes the zero reuse tensors outside the timing
        medians = _interleaved_medians({"every": lambda: [engine.every_exit(b) for b in batches],
                                        "early": early_exit,
                                        "last": lambda: [_last_exit_alone(engine, b) for b in batches]},
                                       args.repeats)
        all_exits, early, last_alone = medians["every"], medians["early"], medians["last"]
        stage_seconds = _stage_seconds(engine, batches[0], args.repeats)
        streaming = _streaming(engine, images[:args.streaming_images], thresholds) if args.streaming_images else None

    exits_info = engine.manifest["exits"]
    cumulative = [e["cumulative_gflops"] for e in exits_info]
    expected = float(np.dot(shares, cumulative))
    reached = 1.0 - np.concatenate([[0.0], np.cumsum(shares)[:-1]])       # share of images each exit runs on
    by_stage_times = sum(stage_seconds) / float(np.dot(reached, stage_seconds))
    print(f"model: {engine.manifest['model']} ({'random weights' if not args.mindir else model_dir}), "
          f"{args.images} images, batch {args.batch_size}, exit shares "
          + ", ".join(f"{100 * s:.0f}%" for s in shares))
    print(f"\npreprocessing ({args.image_size[0]}x{args.image_size[1]} JPEG -> {size} px, per image, ms): "
          f"p50 | p95 = {_percentiles(preprocess_seconds)}; "
          f"mean {1000 * np.mean(preprocess_seconds):.2f} (not included below)\n")
    print("model part:\n")
    print("| run | images/s | GFLOPs/image | speedup of early exit: measured | by FLOPs | measured / FLOPs |")
    print("|---|---|---|---|---|---|")
    for name, seconds, gflops in (("every exit (no early exit)", all_exits, cumulative[-1]),
                                  ("last exit alone", last_alone, exits_info[-1]["stage_gflops"]),
                                  ("early-exit engine", early, expected)):
        measured, predicted = seconds / early, gflops / expected
        print(f"| {name} | {args.images / seconds:.1f} | {gflops:.3f} | "
              + ("- | - | - |" if name == "early-exit engine" else
                 f"{measured:.2f}x | {predicted:.2f}x | {measured / predicted:.2f} |"))
    print(f"\neach exit on a batch of {len(batches[0])}: "
          + ", ".join(f"exit {k + 1} {1000 * s / len(batches[0]):.2f} ms/image "
                      f"({1e3 * s / len(batches[0]) / info['stage_gflops']:.0f} ms/GFLOP)"
                      for k, (s, info) in enumerate(zip(stage_seconds, exits_info)))
          + f"; the speedup over every exit these stage times allow: {by_stage_times:.2f}x "
          f"(measured / stage times: {all_exits / early / by_stage_times:.2f})")
    if reference:
        ours = 1e3 * all_exits / args.images
        print(f"\nexported graphs, every exit, batch {args.batch_size}: {ours:.1f} ms/image; PyTorch reference of the "
              f"authors' cascade: {reference:.1f} ms/image; speedup {reference / ours:.2f}x")
    if streaming:
        print(f"\nbatch 1 (streaming, {len(streaming['early'])} images), model part, ms:\n")
        print("| run | p50 | p95 |")
        print("|---|---|---|")
        print(f"| early-exit engine, all images | {_percentiles(streaming['early'])} |")
        for k in range(engine.num_exits):
            chosen = [t for t, e in zip(streaming["early"], streaming["exits"]) if e == k]
            if chosen:
                print(f"| ... answered at exit {k + 1} ({len(chosen)} images) | {_percentiles(chosen)} |")
        print(f"| every exit (no early exit) | {_percentiles(streaming['every'])} |")
        print(f"| last exit alone | {_percentiles(streaming['last'])} |")


def _stage_seconds(engine, batch, repeats):
    """Median seconds of each exit alone on ``batch`` (fed the previous exit's real reuse tensors)."""
    tensor, reused, seconds = ms.Tensor(batch), (), []
    for k in range(engine.num_exits):
        seconds.append(_median_seconds(lambda: engine.call_exit(k, tensor, reused)[0].asnumpy(), max(repeats, 5)))
        reused = tuple(engine.call_exit(k, tensor, reused)[1:])
    return seconds


def _streaming(engine, images, thresholds):
    """Per-image seconds (and exit) classifying ``images`` one at a time; every exit and the last
    exit alone for comparison."""
    run = engine.run(thresholds, batch_size=1)
    result = {"early": [], "every": [], "last": []}
    for image in images:
        one = image[None]
        for key, call in (("early", lambda: run.push(one)), ("every", lambda: engine.every_exit(one)),
                          ("last", lambda: _last_exit_alone(engine, one))):
            start = time.perf_counter()
            call()
            result[key].append(time.perf_counter() - start)
    result["exits"] = run.results()[0].tolist()
    return result


_ZERO_REUSE = {}


def _last_exit_alone(engine, batch):
    """The last exit's graph on ``batch``, fed zero reuse tensors (made once per batch size, untimed)."""
    if len(batch) not in _ZERO_REUSE:
        inputs = engine.manifest["exits"][-1]["inputs"]
        _ZERO_REUSE[len(batch)] = tuple(ms.Tensor(np.zeros([len(batch)] + item["shape"][1:], np.float32))
                                        for item in inputs[1:])
    return engine.call_exit(engine.num_exits - 1, ms.Tensor(batch), _ZERO_REUSE[len(batch)])[0].asnumpy()


if __name__ == "__main__":
    main()
