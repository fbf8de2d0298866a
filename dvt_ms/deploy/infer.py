"""Early-exit inference over image files: inputs, batches, per-image records, the summary.

Exit 1 runs on a batch; only the images whose confidence is below exit 1's threshold go on, with
their reuse tensors, to exit 2, and so on; the last exit answers the rest. Results per image
(path, class, confidence, exit) go to a CSV or JSON file; a summary gives the share of images at
each exit, images/s, the FLOPs-predicted speedup beside the measured one and, when the folder has
class subfolders, the accuracy.
"""
import csv
import io
import json
import logging
import os
import time

import numpy as np

from ..errors import InferenceError
from ..fileio import atomic_write_text
from ..imagefolder import IMAGE_EXTENSIONS, class_folders, image_files
from ..calibrate.search import NEVER
from .preprocess import Preprocessor

__all__ = ["collect_images", "labels_in_model_order", "run_inference", "format_summary", "write_results"]

LOGGER = logging.getLogger(__name__)


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


def run_inference(engine, paths, labels, exit_thresholds, batch_size=32, compare_all_exits=True):
    """Classify ``paths`` with early exit. Returns (per-image records, summary dict).

    ``labels`` (or None) are in the model's class order.

    Unreadable images are reported and skipped. With ``compare_all_exits`` the same batches are
    also run through every exit (no early exit) to measure the speedup."""
    preprocess = Preprocessor(engine.manifest["preprocess"])
    names = engine.manifest.get("class_names")
    records, skipped = [], []
    engine_seconds = all_exits_seconds = 0.0
    never = [float(NEVER)] * engine.num_exits
    for start in range(0, len(paths), batch_size):
        batch_paths, batch_labels, arrays = [], [], []
        for offset, path in enumerate(paths[start:start + batch_size]):
            try:
                arrays.append(preprocess(path))
            except ValueError as err:
                LOGGER.warning("skipping unreadable image %s: %s", path, err)
                skipped.append({"path": path, "error": str(err)})
                continue
            batch_paths.append(path)
            batch_labels.append(-1 if labels is None else int(labels[start + offset]))
        if not arrays:
            continue
        images = np.stack(arrays)
        begin = time.perf_counter()
        exits, predictions, confidences = engine.classify(images, exit_thresholds)
        engine_seconds += time.perf_counter() - begin
        if compare_all_exits:
            begin = time.perf_counter()
            engine.classify(images, never)
            all_exits_seconds += time.perf_counter() - begin
        for path, label, k, prediction, confidence in zip(batch_paths, batch_labels, exits, predictions, confidences):
            record = {"path": path, "class_index": int(prediction),
                      "class": names[prediction] if names else str(int(prediction)),
                      "confidence": float(confidence), "exit": int(k) + 1}
            if labels is not None:
                record["label"] = int(label)
                record["correct"] = bool(prediction == label)
            records.append(record)
        LOGGER.info("classified %d/%d images", min(start + batch_size, len(paths)), len(paths))
    if not records:
        raise InferenceError(f"none of the {len(paths)} images could be read")
    return records, _summary(engine, records, skipped, exit_thresholds, engine_seconds, all_exits_seconds)


def _summary(engine, records, skipped, exit_thresholds, engine_seconds, all_exits_seconds):
    exits = np.array([r["exit"] - 1 for r in records])
    shares = np.bincount(exits, minlength=engine.num_exits) / len(records)
    expected_gflops = float(np.dot(shares, engine.cumulative_gflops))
    summary = {"images": len(records), "skipped": skipped, "exit_thresholds": [float(t) for t in exit_thresholds],
               "exit_shares": shares.tolist(), "expected_gflops": expected_gflops,
               "images_per_second": len(records) / engine_seconds,
               "predicted_speedup": engine.cumulative_gflops[-1] / expected_gflops}
    if all_exits_seconds:
        summary["all_exits_images_per_second"] = len(records) / all_exits_seconds
        summary["measured_speedup"] = all_exits_seconds / engine_seconds
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


def format_summary(summary, num_exits):
    lines = [f"images: {summary['images']} classified, {len(summary['skipped'])} skipped (unreadable)"]
    lines += [f"exit {k + 1}: {100 * share:.1f}% of images (threshold {summary['exit_thresholds'][k]:.4g})"
              for k, share in enumerate(summary["exit_shares"])]
    if "accuracy" in summary:
        lines.append(f"accuracy: {summary['accuracy']:.2f}%")
    lines.append(f"expected GFLOPs per image: {summary['expected_gflops']:.4f}")
    lines.append(f"early-exit engine: {summary['images_per_second']:.1f} images/s")
    if "measured_speedup" in summary:
        lines.append(f"all exits, no early exit: {summary['all_exits_images_per_second']:.1f} images/s")
        lines.append(f"speedup over all exits: measured {summary['measured_speedup']:.2f}x, "
                     f"FLOPs-predicted {summary['predicted_speedup']:.2f}x")
    else:
        lines.append(f"FLOPs-predicted speedup over all exits: {summary['predicted_speedup']:.2f}x")
    return "\n".join(lines)
