"""Early-exit inference over image files: inputs, batches, per-image records, the summary.

Images are preprocessed a batch at a time and pushed into an ``EarlyExitRun`` (``engine.py``):
exit 1 answers the confident ones, the others go on with their reuse tensors to exit 2, and so
on; the last exit answers the rest. Results per image (path, class, confidence, exit) go to a CSV
or JSON file, and for a handful of images on the screen (``format_answers``); the summary gives the
share of images at each exit, the time of preprocessing and of the model part, the FLOPs-predicted
speedup (and, on request, the measured one: every image run through every exit a second time),
batch-1 latency percentiles when streaming and, when the folder has class subfolders, the accuracy.
"""
import csv
import io
import json
import logging
import os
import time

import numpy as np

from ..cli import interrupted_code, raise_if_stop_requested
from ..errors import InferenceError
from ..fileio import OutputFileKind, atomic_write_text
from ..imagefolder import IMAGE_EXTENSIONS, class_folders, image_files
from .controller import format_budget_summary
from .deadline import format_deadline_summary
from .preprocess import Preprocessor, UnreadableImageError

__all__ = ["ANSWERS_SHOWN", "RESULTS_FILE", "SUMMARY_FILE", "collect_images", "labels_in_model_order",
           "run_inference", "format_answers", "format_summary", "write_results"]

LOGGER = logging.getLogger(__name__)

#: Up to this many images, inference prints each answer (class, confidence, exit).
ANSWERS_SHOWN = 20

_RECORD_FIELDS = ("path", "class_index", "class", "confidence", "exit")   # then label, correct with labels


def _file_start(path, size=4096):
    try:
        with open(path, "rb") as handle:
            return handle.read(size).decode("utf-8", errors="replace")
    except OSError:
        return ""


def _is_results_file(path):
    """A results file ``write_results`` wrote: a CSV with our header, or a JSON list of our records."""
    start = _file_start(path)
    if start.startswith(",".join(_RECORD_FIELDS)):
        return True
    return start.startswith("[") and all(f'"{field}"' in start for field in _RECORD_FIELDS)


def _is_summary_file(path):
    start = _file_start(path)
    return start.startswith("{") and '"images"' in start and '"exit_shares"' in start


# What run_infer.sh recognises as its own output files (the only existing files --out / --summary replace).
RESULTS_FILE = OutputFileKind("a results file", _is_results_file)
SUMMARY_FILE = OutputFileKind("an inference summary", _is_summary_file)


def collect_images(inputs):
    """(paths, labels or None, class names from subfolders or None) for files and folders.

    A folder whose immediate subfolders hold images is read as labelled class folders."""
    paths, labels, class_names = [], [], None
    for item in inputs:
        if os.path.isfile(item):
            paths.append(item)
            labels.append(-1)
        elif os.path.isdir(item):
            subdirs = class_folders(item)
            if subdirs:
                if class_names is not None and class_names != subdirs:
                    raise InferenceError(f"{item}: its class folders differ from those of an earlier input "
                                         "folder; give folders with the same classes, or one at a time")
                class_names = subdirs
                for label, name in enumerate(subdirs):
                    for path in image_files(os.path.join(item, name)):
                        paths.append(path)
                        labels.append(label)
            else:
                for path in image_files(item):
                    paths.append(path)
                    labels.append(-1)
        else:
            raise InferenceError(f"{item}: no such file or folder")
    if not paths:
        raise InferenceError(f"no images found in {', '.join(inputs)} (extensions: {', '.join(IMAGE_EXTENSIONS)})")
    labelled = all(label >= 0 for label in labels)
    return paths, (np.asarray(labels) if labelled else None), (class_names if labelled else None)


def labels_in_model_order(labels, folder_names, model_class_names, source):
    """Map class-folder labels to the model's class indices: by name when the manifest knows the
    class names, else by sorted folder order (the ImageNet folder convention used in training)."""
    if labels is None or not model_class_names:
        return labels
    missing = [name for name in folder_names if name not in model_class_names]
    if missing:
        raise InferenceError(f"{source}: class folder(s) {', '.join(missing)} are not classes of the model")
    index = np.array([model_class_names.index(name) for name in folder_names])
    return index[labels]


def run_inference(engine, paths, labels, exit_thresholds, batch_size=None, compare_all_exits=False, top_k=1,
                  policy=None):
    """Classify ``paths`` with early exit. Returns (per-image records, summary dict).

    A ``policy`` (``controller.BudgetController`` for ``--hold_budget``, ``deadline.DeadlinePolicy``
    for ``--deadline_ms``) steers the thresholds or the stops as the run goes; its report is the
    summary's ``policy``.

    ``labels`` (or None) are in the model's class order. Unreadable images are reported and
    skipped. Preprocessing and the model part are timed apart; with ``compare_all_exits`` the
    same batches are also run through every exit (no early exit) to measure the speedup of the
    model part (each image then runs twice). With ``batch_size`` 1 (streaming) every image is
    classified as it comes and the summary gives latency percentiles; None runs the engine's own
    (``max_batch``). ``top_k`` > 1 adds the best classes at the answering exit to each record."""
    batch_size = batch_size or engine.max_batch
    preprocess = Preprocessor(engine.manifest["preprocess"])
    run = engine.run(exit_thresholds, batch_size, top_k, policy)
    kept_paths, kept_labels, skipped = [], [], []
    seconds = {"preprocess": 0.0, "early_exit": 0.0, "every_exit": 0.0}
    streaming = {"preprocess": [], "early_exit": [], "every_exit": []}     # per image, batch size 1
    num_batches = -(-len(paths) // batch_size)
    interrupted = None
    try:
        for batch_number, start in enumerate(range(0, len(paths), batch_size)):
            arrays = []
            begin = time.perf_counter()
            for offset, path in enumerate(paths[start:start + batch_size]):
                try:
                    arrays.append(preprocess(path))
                except UnreadableImageError as err:
                    LOGGER.warning("skipping unreadable image %s: %s", path, err)
                    skipped.append({"path": path, "error": str(err)})
                    continue
                kept_paths.append(path)
                kept_labels.append(-1 if labels is None else int(labels[start + offset]))
            took = {"preprocess": time.perf_counter() - begin}
            if arrays:
                images = np.stack(arrays)
                begin = time.perf_counter()
                run.push(images)
                took["early_exit"] = time.perf_counter() - begin
                if compare_all_exits:
                    begin = time.perf_counter()
                    engine.every_exit(images)
                    took["every_exit"] = time.perf_counter() - begin
                if batch_size == 1:
                    for key, value in took.items():
                        streaming[key].append(value)
            for key, value in took.items():
                seconds[key] += value
            if (batch_number + 1) % max(1, num_batches // 10) == 0 or batch_number + 1 == num_batches:
                LOGGER.info("processed %d/%d images", min(start + batch_size, len(paths)), len(paths))
            raise_if_stop_requested()
        begin = time.perf_counter()
        run.finish()
        seconds["early_exit"] += time.perf_counter() - begin
    except KeyboardInterrupt as stop:
        # Ctrl-C (or SIGTERM): keep what is answered; the caller writes it and ends with the signal's code.
        interrupted = stop
        LOGGER.warning("interrupted: stopping after %d of %d images", run.answered, len(paths))
    positions, exits, predictions, confidences = run.answered_results()
    if interrupted is not None and not len(positions):
        raise interrupted
    if not kept_paths:
        raise InferenceError(f"none of the {len(paths)} images could be read")
    top_k_classes, top_k_scores = run.answered_top_k()
    kept_paths = [kept_paths[i] for i in positions]
    kept_labels = [kept_labels[i] for i in positions]
    names = engine.manifest.get("class_names")
    records = []
    for index, (path, label, k, prediction, confidence) in enumerate(zip(kept_paths, kept_labels, exits,
                                                                           predictions, confidences)):
        record = dict(zip(_RECORD_FIELDS, (path, int(prediction), _class_name(names, prediction),
                                           float(confidence), int(k) + 1)))
        if top_k > 1:
            record["top_k"] = "; ".join(f"{_class_name(names, c)} {p:.4f}"
                                        for c, p in zip(top_k_classes[index], top_k_scores[index]))
        if labels is not None:
            record["label"] = int(label)
            record["correct"] = bool(prediction == label)
        records.append(record)
    summary = _summary(engine, records, skipped, exit_thresholds, batch_size, seconds)
    if interrupted is not None:
        summary["interrupted"] = {"classified": len(records), "of": len(paths), "exit_code": interrupted_code(interrupted)}
    if batch_size == 1:
        summary["latency_ms"] = _latency(streaming, exits, engine.num_exits)
    if policy is not None:
        correct = None
        if labels is not None:      # by position (an interrupted run answers only some)
            correct = np.zeros(int(positions.max()) + 1, bool)
            correct[positions] = [r["correct"] for r in records]
        latencies = 1000.0 * np.asarray(streaming["early_exit"]) if batch_size == 1 else None
        summary["policy"] = policy.summary(correct=correct, latencies_ms=latencies)
    return records, summary


def _class_name(names, index):
    return names[index] if names else str(int(index))


def _percentiles(seconds):
    p50, p95, p99 = np.percentile(1000.0 * np.asarray(seconds), [50, 95, 99])
    return {"p50": float(p50), "p95": float(p95), "p99": float(p99)}


def _latency(streaming, exits, num_exits):
    """Batch-1 latency percentiles (ms): the model part overall and per exit, preprocessing,
    both together, and every exit (no early exit) for comparison."""
    count = min(len(streaming["early_exit"]), len(exits))   # an interrupted run may end between the two
    streaming = {key: values[:count] for key, values in streaming.items()}
    exits = exits[:count]
    model = np.asarray(streaming["early_exit"])
    latency = {"model": _percentiles(model), "preprocess": _percentiles(streaming["preprocess"]),
               "end_to_end": _percentiles(model + np.asarray(streaming["preprocess"])),
               "per_exit": [{"exit": k + 1, "images": int((exits == k).sum()),
                             **(_percentiles(model[exits == k]) if (exits == k).any() else {})}
                            for k in range(num_exits)]}
    if streaming["every_exit"]:
        latency["every_exit"] = _percentiles(streaming["every_exit"])
    return latency


def _summary(engine, records, skipped, exit_thresholds, batch_size, seconds):
    count = len(records)
    exits = np.array([r["exit"] - 1 for r in records])
    shares = np.bincount(exits, minlength=engine.num_exits) / count
    expected_gflops = float(np.dot(shares, engine.cumulative_gflops))
    summary = {"images": count, "skipped": skipped, "batch_size": batch_size,
               "exit_thresholds": [float(t) for t in exit_thresholds],
               "exit_shares": shares.tolist(), "expected_gflops": expected_gflops,
               "preprocess_ms_per_image": 1000.0 * seconds["preprocess"] / (count + len(skipped)),
               "predicted_speedup": engine.cumulative_gflops[-1] / expected_gflops}
    if seconds["early_exit"]:   # zero only when an interrupt came before the first batch was done
        summary["images_per_second"] = count / seconds["early_exit"]
        summary["end_to_end_images_per_second"] = count / (seconds["early_exit"] + seconds["preprocess"])
    if seconds["every_exit"] and seconds["early_exit"]:
        summary["all_exits_images_per_second"] = count / seconds["every_exit"]
        summary["measured_speedup"] = seconds["every_exit"] / seconds["early_exit"]
    if "correct" in records[0]:
        summary["accuracy"] = 100.0 * float(np.mean([r["correct"] for r in records]))
    return summary


def write_results(path, records):
    """CSV or JSON by extension, written atomically."""
    if path.endswith(".json"):
        text = json.dumps(records, indent=1)
    else:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records)
        text = buffer.getvalue()
    atomic_write_text(path, text)


def format_answers(records, num_exits):
    """One line per image: its class, confidence and exit (and its top-k when recorded)."""
    lines = []
    for record in records:
        line = (f"{record['path']}: {record['class']} (confidence {record['confidence']:.3f}, "
                f"exit {record['exit']} of {num_exits})")
        if "top_k" in record:
            line += f"; top {record['top_k'].count(';') + 1}: {record['top_k']}"
        lines.append(line)
    return "\n".join(lines)


def format_summary(summary, num_exits):
    lines = [f"images: {summary['images']} classified, {len(summary['skipped'])} skipped (unreadable)"]
    selected = summary.get("selected")
    if selected:
        lines.append(_format_selection(selected))
    lines += [f"exit {k + 1}: {100 * share:.1f}% of images (threshold {summary['exit_thresholds'][k]:.4g})"
              for k, share in enumerate(summary["exit_shares"])]
    if "accuracy" in summary:
        lines.append(f"accuracy: {summary['accuracy']:.2f}%")
    lines.append(f"expected GFLOPs per image: {summary['expected_gflops']:.4f}")
    lines.append(f"preprocessing: {summary['preprocess_ms_per_image']:.2f} ms per image")
    if "images_per_second" in summary:
        lines.append(f"early-exit engine (model part): {summary['images_per_second']:.1f} images/s; "
                     f"with preprocessing {summary['end_to_end_images_per_second']:.1f} images/s "
                     f"(batch size {summary['batch_size']})")
    if "measured_speedup" in summary:
        lines.append(f"all exits, no early exit (model part): {summary['all_exits_images_per_second']:.1f} images/s")
        lines.append(f"speedup over all exits (model part): measured {summary['measured_speedup']:.2f}x, "
                     f"FLOPs-predicted {summary['predicted_speedup']:.2f}x")
    else:
        lines.append(f"FLOPs-predicted speedup over all exits: {summary['predicted_speedup']:.2f}x "
                     "(--compare measures it: every image then runs through every exit too)")
    latency = summary.get("latency_ms")
    if latency:
        lines.append(f"latency per image (batch size 1), model part: p50 {latency['model']['p50']:.2f} ms, "
                     f"p95 {latency['model']['p95']:.2f} ms; with preprocessing: p50 "
                     f"{latency['end_to_end']['p50']:.2f} ms, p95 {latency['end_to_end']['p95']:.2f} ms")
        for row in latency["per_exit"]:
            if row["images"]:
                lines.append(f"  answered at exit {row['exit']} ({row['images']} images): p50 {row['p50']:.2f} ms, "
                             f"p95 {row['p95']:.2f} ms")
        if "every_exit" in latency:
            lines.append(f"  every exit, no early exit: p50 {latency['every_exit']['p50']:.2f} ms, "
                         f"p95 {latency['every_exit']['p95']:.2f} ms")
    policy = summary.get("policy")
    if policy:
        lines += (format_budget_summary if policy["mode"] == "hold_budget" else format_deadline_summary)(policy)
    return "\n".join(lines)


def _format_selection(selected):
    """Which calibrated setting a budget or target accuracy picked, and on what it was matched."""
    if "budget_gflops" in selected:
        asked = f"budget {selected['budget_gflops']:g} GFLOPs per image"
    else:
        asked = f"target accuracy {selected['target_accuracy']:g}%"
    return (f"{asked}: setting {selected['budget_index']} of the budget table, matched on its calibration figures "
            f"({selected['calibration_gflops']:.4f} GFLOPs per image, {selected['calibration_accuracy']:.2f}% on the "
            "calibration images); the expected GFLOPs below are measured on these images")
