"""Command line: early-exit inference on an exported model directory (no model code needed).

    python -m dvt_ms.deploy --model DIR [--thresholds T.yaml] [--budget GFLOPS | --accuracy PCT]
                            IMAGE_OR_FOLDER ... [--out FILE] [--compare] [--top_k K]
    python -m dvt_ms.deploy --model DIR [--thresholds T.yaml] --hold_budget GFLOPS [--window N] IMAGES ...
    python -m dvt_ms.deploy --model DIR [--thresholds T.yaml] [--budget GFLOPS] --deadline_ms D IMAGES ...

Needs MindSpore, numpy, Pillow and PyYAML only: the exported graphs and manifest.yaml say
everything (the model code, mindcv and the training stack are never imported).
"""
import json
import logging
import sys
import time

from .. import cli
from ..contract.digest import ACCEPT_MISMATCH_FLAG
from ..contract.manifest import load_manifest
from ..contract.thresholds import accuracy_problem, budget_problem
from ..device import set_float32_precision, use_device
from ..errors import InferenceError
from ..fileio import atomic_write_text, check_distinct_outputs, check_output_file
from .classifier import select_exit_thresholds, thresholds_of
from .controller import DEFAULT_WINDOW, BudgetController
from .deadline import DeadlinePolicy, measure_exit_seconds
from .engine import EarlyExitEngine, warn_if_made_for_another_device
from .infer import (ANSWERS_SHOWN, RESULTS_FILE, SUMMARY_FILE, collect_images, format_answers, format_summary,
                    labels_in_model_order, run_inference, write_results)

LOGGER = logging.getLogger(__name__)


def _budget_controller(args, manifest):
    """The ``--hold_budget`` controller: it starts on the row ``--budget`` would pick."""
    document, source = thresholds_of(args.model, manifest, args.thresholds, args.accept_thresholds_mismatch)
    gflops = [info["cumulative_gflops"] for info in manifest["exits"]]
    return BudgetController.from_document(document, gflops, args.hold_budget, source, window=args.window)


def _check_options(args):
    if args.deadline_ms is not None and args.hold_budget is not None:
        raise InferenceError("--deadline_ms and --hold_budget do not combine: choose one")
    if args.batch_size is None and args.deadline_ms is not None:
        args.batch_size = 1
    if args.batch_size is not None and args.batch_size < 1:
        raise InferenceError(f"--batch_size must be at least 1, got {args.batch_size}")
    if args.deadline_ms is not None and args.batch_size != 1:
        raise InferenceError(f"--deadline_ms streams images one at a time: it needs --batch_size 1, "
                             f"got {args.batch_size}")
    if args.window < 8:
        raise InferenceError(f"--window must be at least 8 images, got {args.window}")
    # before any work, in the selection rule's words
    problem = (budget_problem("--budget", args.budget) or budget_problem("--hold_budget", args.hold_budget)
               or accuracy_problem("--accuracy", args.accuracy))
    if problem:
        raise InferenceError(problem)
    if args.top_k < 1:
        raise InferenceError(f"--top_k must be at least 1, got {args.top_k}")


def _run(args):
    _check_options(args)
    check_distinct_outputs(out=args.out, summary=args.summary)
    check_output_file(args.out, kind=RESULTS_FILE)
    check_output_file(args.summary, kind=SUMMARY_FILE)
    manifest = load_manifest(args.model)
    controller = _budget_controller(args, manifest) if args.hold_budget is not None else None
    if controller is not None:
        exit_thresholds, row = [float(t) for t in controller.thresholds_for_next_call()], None
    else:
        exit_thresholds, row, _ = select_exit_thresholds(args.model, manifest, args.thresholds, args.budget,
                                                         args.accuracy, args.accept_thresholds_mismatch)
    paths, labels, folder_names = collect_images(args.inputs)
    labels = labels_in_model_order(labels, folder_names, manifest.get("class_names"), ", ".join(args.inputs))
    device = use_device(args.device_target).device
    set_float32_precision(device, args.fast_float32)
    warn_if_made_for_another_device(manifest, device, args.model)
    engine = EarlyExitEngine(args.model, manifest, max_batch=args.batch_size, num_images=len(paths))
    begin = time.perf_counter()
    engine.warm_up()
    LOGGER.info("compiled %d exits at batch sizes %s on %s in %.1fs", engine.num_exits, engine.buckets, device,
                time.perf_counter() - begin)
    policy = controller
    if args.deadline_ms is not None:
        policy = DeadlinePolicy(args.deadline_ms, exit_thresholds, measure_exit_seconds(engine))
    records, summary = run_inference(engine, paths, labels, exit_thresholds, engine.max_batch, args.compare,
                                     args.top_k, policy)
    if row is not None:
        asked = {"budget_gflops": args.budget} if args.budget is not None else {"target_accuracy": args.accuracy}
        summary["selected"] = {**asked, **{key: row[key] for key in ("budget_index", "calibration_gflops",
                                                                       "calibration_accuracy") if key in row}}
    if args.out:
        write_results(args.out, records)
    if args.summary:
        atomic_write_text(args.summary, json.dumps(summary, indent=1))
    if len(records) <= ANSWERS_SHOWN:
        print(format_answers(records, engine.num_exits))
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
    parser.add_argument("--thresholds", help="thresholds YAML from run_eval.sh (default: the manifest's); it must "
                        "be calibrated on the exported weights")
    choice = parser.add_mutually_exclusive_group()
    choice.add_argument("--budget", type=float, help="GFLOPs per image: the most accurate calibrated setting whose "
                        "calibration cost fits it")
    choice.add_argument("--accuracy", type=float, help="top-1 %%: the cheapest calibrated setting reaching it on the "
                        "calibration images")
    choice.add_argument("--hold_budget", type=float,
                        help="GFLOPs per image: start as --budget does, then move along the calibrated budget "
                             "table to hold that row's cost (+/-5%% per --window images) as the inputs drift")
    parser.add_argument("--window", type=int, default=DEFAULT_WINDOW,
                        help="images per window of --hold_budget (docs/deployment.md: how large it must be)")
    parser.add_argument("--deadline_ms", type=float,
                        help="streaming (batch size 1): answer each image with the deepest exit that ends "
                             "within D ms of its arrival (model part), or earlier when confident")
    parser.add_argument(ACCEPT_MISMATCH_FLAG, action="store_true",
                        help="use thresholds calibrated on other weights (or recording none) anyway")
    parser.add_argument("inputs", nargs="+", help="images and/or folders (class subfolders give accuracy)")
    parser.add_argument("--out", help="per-image results, .csv or .json")
    parser.add_argument("--summary", help="write the summary as JSON here")
    parser.add_argument("--batch_size", type=int, default=None,
                        help="images per exit call (default: chosen from the number of images and the model's "
                             "GFLOPs; 1 with --deadline_ms); 1 = streaming, with latency percentiles in the summary")
    parser.add_argument("--top_k", type=int, default=1, help="also give the K best classes at the answering exit")
    parser.add_argument("--compare", action="store_true",
                        help="also run every image through every exit (no early exit) to measure the speedup")
    parser.add_argument("--device_target", default="auto", choices=["auto", "CPU", "GPU", "Ascend"],
                        help="auto: Ascend, then GPU, then CPU")
    parser.add_argument("--fast_float32", action="store_true",
                        help="let float32 matmuls/convolutions run in HF32 (Ascend) / TF32 (GPU): faster, not float32")
    args = parser.parse_args(argv)
    cli.setup_logging(timestamps=False)
    return cli.run(lambda: _run(args), defer_interrupts=True)


if __name__ == "__main__":
    sys.exit(main())
