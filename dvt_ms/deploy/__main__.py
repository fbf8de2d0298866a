"""Command line: early-exit inference on an exported model directory (no model code needed).

    python -m dvt_ms.deploy --model DIR [--thresholds T.yaml | --budget GFLOPS] IMAGE_OR_FOLDER ... [--out FILE]

Needs MindSpore, numpy, Pillow and PyYAML only: the exported graphs and manifest.yaml say
everything (the model code, mindcv and the training stack are never imported).
"""
import json
import logging
import math
import os
import sys
import time

from .. import cli
from ..errors import InferenceError
from ..fileio import atomic_write_text, check_distinct_outputs, check_output_file
from .engine import EarlyExitEngine
from .infer import (RESULTS_FILE, SUMMARY_FILE, collect_images, format_summary, labels_in_model_order,
                    run_inference, write_results)
from .manifest import MANIFEST_NAME, load_manifest, load_thresholds, select_budget

LOGGER = logging.getLogger(__name__)


def _exit_thresholds(args, manifest):
    document = load_thresholds(args.thresholds, manifest) if args.thresholds else manifest.get("thresholds")
    source = args.thresholds or os.path.join(args.model, MANIFEST_NAME)
    if args.budget is not None:
        if document is None:
            raise InferenceError(f"--budget needs calibrated thresholds; {source} has none")
        return select_budget(document, args.budget, source)
    if document is None:
        raise InferenceError(f"{source} has no thresholds: pass --thresholds T.yaml or --budget GFLOPS")
    return [float(t) for t in document["exit_thresholds"]]


def _run(args):
    if args.batch_size < 1:
        raise InferenceError(f"--batch_size must be at least 1, got {args.batch_size}")
    if args.budget is not None and not (math.isfinite(args.budget) and args.budget > 0):
        raise InferenceError(f"--budget must be a positive number of GFLOPs per image, got {args.budget}")
    check_distinct_outputs(out=args.out, summary=args.summary)
    check_output_file(args.out, kind=RESULTS_FILE)
    check_output_file(args.summary, kind=SUMMARY_FILE)
    manifest = load_manifest(args.model)
    exit_thresholds = _exit_thresholds(args, manifest)
    paths, labels, folder_names = collect_images(args.inputs)
    labels = labels_in_model_order(labels, folder_names, manifest.get("class_names"), ", ".join(args.inputs))
    from ..device import use_device   # MindSpore loads slowly: only once the inputs are checked
    use_device(args.device_target)
    engine = EarlyExitEngine(args.model, manifest, max_batch=args.batch_size)
    begin = time.perf_counter()
    engine.warm_up()
    LOGGER.info("compiled %d exits at batch sizes %s in %.1fs", engine.num_exits, engine.buckets,
                time.perf_counter() - begin)
    records, summary = run_inference(engine, paths, labels, exit_thresholds, args.batch_size, not args.no_compare)
    if args.out:
        write_results(args.out, records)
    if args.summary:
        atomic_write_text(args.summary, json.dumps(summary, indent=1))
    print(format_summary(summary, engine.num_exits))
    written = " and ".join(path for path in (args.out, args.summary) if path)
    if written:
        print(f"results: {written}")
    stopped = summary.get("interrupted")
    if stopped:
        sys.stdout.flush()
        print(f"interrupted: {stopped['classified']} of {stopped['of']} images classified"
              + (f"; their results are in {written}" if written else ""), file=sys.stderr)
        return stopped["exit_code"]
    return 0


def main(argv=None):
    parser = cli.argument_parser("dvt_ms.deploy", __doc__)
    parser.add_argument("--model", required=True, help="directory written by run_export.sh")
    choice = parser.add_mutually_exclusive_group()
    choice.add_argument("--thresholds", help="thresholds YAML from run_eval.sh (default: the manifest's)")
    choice.add_argument("--budget", type=float, help="GFLOPs per image: use the best calibrated setting within it")
    parser.add_argument("inputs", nargs="+", help="images and/or folders (class subfolders give accuracy)")
    parser.add_argument("--out", help="per-image results, .csv or .json")
    parser.add_argument("--summary", help="write the summary as JSON here")
    parser.add_argument("--batch_size", type=int, default=32,
                        help="images per exit call; 1 = streaming, with latency percentiles in the summary")
    parser.add_argument("--no_compare", action="store_true", help="skip the all-exits pass that measures speedup")
    parser.add_argument("--device_target", default="CPU", choices=["CPU", "GPU", "Ascend"])
    args = parser.parse_args(argv)
    cli.setup_logging(timestamps=False)
    return cli.run(lambda: _run(args), defer_interrupts=True)


if __name__ == "__main__":
    sys.exit(main())
