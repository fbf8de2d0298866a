"""Early-exit inference on exported MindIR files: no model code at run time.

    python -m dvt_ms.infer --model DIR [--thresholds T.yaml | --budget GFLOPS] IMAGE_OR_FOLDER ... [--out FILE]

Exit 1 runs on a batch; only the images whose confidence is below exit 1's threshold go on, with
their reuse tensors, to exit 2, and so on; the last exit answers the rest. Results per image
(path, class, confidence, exit) go to a CSV or JSON file; a summary gives the share of images at
each exit, images/s, the FLOPs-predicted speedup beside the measured one and, when the folder has
class subfolders, the accuracy.
"""
import argparse
import csv
import io
import json
import logging
import os
import sys
import time

import numpy as np
import yaml

from .adaptive import NEVER, softmax
from .data import IMAGE_EXTENSIONS
from .fileio import atomic_write_text
from .export import MANIFEST_FORMAT, MANIFEST_NAME, check_thresholds_fit

__all__ = ["InferenceError", "load_manifest", "load_thresholds", "select_budget", "bucket_sizes", "EarlyExitEngine",
           "collect_images", "labels_in_model_order", "Preprocessor", "run_inference", "main"]

LOGGER = logging.getLogger(__name__)


class InferenceError(ValueError):
    """Bad model directory, thresholds or inputs; raised before any output is written."""


def load_manifest(model_dir):
    path = os.path.join(model_dir, MANIFEST_NAME)
    if not os.path.isfile(path):
        raise InferenceError(f"{model_dir}: no {MANIFEST_NAME} (is this a directory written by run_export.sh?)")
    with open(path, encoding="utf-8") as handle:
        manifest = yaml.safe_load(handle)
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise InferenceError(f"{path}: not a {MANIFEST_FORMAT} manifest")
    for exit_info in manifest["exits"]:
        file_path = os.path.join(model_dir, exit_info["file"])
        if not os.path.isfile(file_path):
            raise InferenceError(f"{model_dir}: MindIR file {exit_info['file']} named in {MANIFEST_NAME} is missing")
    return manifest


def load_thresholds(path, manifest):
    """A calibrated thresholds YAML (from run_eval.sh), checked against the manifest."""
    try:
        with open(path, encoding="utf-8") as handle:
            document = yaml.safe_load(handle)
    except OSError as err:
        raise InferenceError(f"cannot read thresholds {path}: {err.strerror}") from None
    if not isinstance(document, dict):
        raise InferenceError(f"{path}: not a thresholds file (expected a mapping)")
    try:
        check_thresholds_fit(document, manifest["model"], manifest["num_exits"], path)
    except ValueError as err:
        raise InferenceError(str(err)) from None
    return document


def select_budget(thresholds_document, budget_gflops, source):
    """The calibrated row with the best calibration accuracy whose expected cost fits the budget."""
    rows = thresholds_document.get("budgets") or []
    if not rows:
        raise InferenceError(f"{source} has no budget table; pass --thresholds instead of --budget")
    fitting = [row for row in rows if row["calibration_gflops"] <= budget_gflops]
    if not fitting:
        cheapest = min(row["calibration_gflops"] for row in rows)
        raise InferenceError(f"budget {budget_gflops} GFLOPs is below the cheapest calibrated setting "
                             f"({cheapest:.4f} GFLOPs per image) in {source}")
    best = max(fitting, key=lambda row: (row["calibration_accuracy"], -row["calibration_gflops"]))
    return [float(t) for t in best["exit_thresholds"]]


def bucket_sizes(max_batch):
    """Batch sizes the exits run at: powers of two up to ``max_batch``, and ``max_batch`` itself."""
    sizes, size = [], 1
    while size < max_batch:
        sizes.append(size)
        size *= 2
    return sizes + [max_batch]


class EarlyExitEngine:
    """The exported exits as GraphCells, run with real early exit.

    Batches are padded up to the next bucket size (a power of two) at every exit:
    each new input shape costs MindSpore a kernel resize (~0.2 s on CPU), so a handful of fixed
    shapes, compiled once by ``warm_up``, beats a different shape at every call."""

    def __init__(self, model_dir, manifest=None, max_batch=32):
        import mindspore as ms
        from mindspore import nn
        self._ms = ms
        self.manifest = manifest or load_manifest(model_dir)
        self.exits = [nn.GraphCell(ms.load(os.path.join(model_dir, info["file"])))
                      for info in self.manifest["exits"]]
        self.cumulative_gflops = [info["cumulative_gflops"] for info in self.manifest["exits"]]
        self.buckets = bucket_sizes(max_batch)

    @property
    def num_exits(self):
        return len(self.exits)

    def warm_up(self):
        """Run every exit once at every bucket size, so that timing excludes compilation."""
        size = self.manifest["preprocess"]["img_size"]
        images = np.zeros((self.buckets[-1], 3, size, size), np.float32)
        for bucket in self.buckets:
            self.classify(images[:bucket], [float(NEVER)] * self.num_exits)

    def _bucket(self, count):
        return next((b for b in self.buckets if b >= count), count)

    def classify(self, images, exit_thresholds):
        """(exit index, class, confidence) per image of ``images`` (B, 3, H, W) float32."""
        ms = self._ms
        count = images.shape[0]
        exit_index = np.full(count, -1, np.int64)
        predictions = np.zeros(count, np.int64)
        confidences = np.zeros(count, np.float32)
        remaining = np.arange(count)            # original index of each real row of the batch
        padding = self._bucket(count) - count
        batch = ms.Tensor(np.concatenate([images, np.repeat(images[-1:], padding, axis=0)]) if padding else images)
        reused = ()
        for k, graph in enumerate(self.exits):
            outputs = graph(batch, *reused)
            probs = softmax(outputs[0].asnumpy()[:len(remaining)])   # drop the padding rows
            confidence = probs.max(axis=1)
            last = k == self.num_exits - 1
            done = np.ones(len(remaining), bool) if last else confidence >= np.float32(exit_thresholds[k])
            answered = remaining[done]
            exit_index[answered] = k
            predictions[answered] = probs[done].argmax(axis=1)
            confidences[answered] = confidence[done]
            if last or done.all():
                break
            rows = np.flatnonzero(~done)
            remaining = remaining[rows]
            padded = np.concatenate([rows, np.full(self._bucket(len(rows)) - len(rows), rows[-1])])
            keep = ms.Tensor(padded.astype(np.int32))
            batch = batch[keep]
            reused = tuple(tensor[keep] for tensor in outputs[1:])
        return exit_index, predictions, confidences


def collect_images(inputs):
    """(paths, labels or None, class names from subfolders or None) for files and folders.

    A folder whose immediate subfolders hold images is read as labelled class folders."""
    paths, labels, class_names = [], [], None
    for item in inputs:
        if os.path.isfile(item):
            paths.append(item)
            labels.append(-1)
        elif os.path.isdir(item):
            subdirs = sorted(d for d in os.listdir(item) if os.path.isdir(os.path.join(item, d)))
            if subdirs:
                class_names = subdirs
                for label, name in enumerate(subdirs):
                    for path in _images_in(os.path.join(item, name)):
                        paths.append(path)
                        labels.append(label)
            else:
                for path in _images_in(item):
                    paths.append(path)
                    labels.append(-1)
        else:
            raise InferenceError(f"{item}: no such file or folder")
    if not paths:
        raise InferenceError(f"no images found in {', '.join(inputs)} (extensions: {', '.join(IMAGE_EXTENSIONS)})")
    labelled = all(label >= 0 for label in labels)
    return paths, (np.asarray(labels) if labelled else None), (class_names if labelled else None)


def _images_in(folder):
    found = []
    for root, _, files in os.walk(folder):
        found.extend(os.path.join(root, f) for f in files if f.lower().endswith(IMAGE_EXTENSIONS))
    return sorted(found)


class Preprocessor:
    """The evaluation transforms the manifest names (the same ops as the validation pipeline)."""

    def __init__(self, preprocess):
        from .data import eval_transforms
        self.transforms = eval_transforms(preprocess["img_size"], preprocess["crop_pct"], preprocess["interpolation"])

    def __call__(self, path):
        """The (3, H, W) float32 image, or raises ValueError with the reason it cannot be read."""
        try:
            with open(path, "rb") as handle:
                data = np.frombuffer(handle.read(), np.uint8)
            for op in self.transforms:
                data = op(data)
        except (OSError, RuntimeError, ValueError) as err:
            raise ValueError(str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__) from None
        return np.asarray(data, np.float32)


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


def _write_results(path, records):
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


def main(argv=None):
    parser = argparse.ArgumentParser(prog="run_infer.sh", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="directory written by run_export.sh")
    choice = parser.add_mutually_exclusive_group()
    choice.add_argument("--thresholds", help="thresholds YAML from run_eval.sh (default: the manifest's)")
    choice.add_argument("--budget", type=float, help="GFLOPs per image: use the best calibrated setting within it")
    parser.add_argument("inputs", nargs="+", help="images and/or folders (class subfolders give accuracy)")
    parser.add_argument("--out", help="per-image results, .csv or .json")
    parser.add_argument("--summary", help="write the summary as JSON here")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--no_compare", action="store_true", help="skip the all-exits pass that measures speedup")
    parser.add_argument("--device_target", default="CPU", choices=["CPU", "GPU", "Ascend"])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        manifest = load_manifest(args.model)
        document = load_thresholds(args.thresholds, manifest) if args.thresholds else manifest.get("thresholds")
        source = args.thresholds or os.path.join(args.model, MANIFEST_NAME)
        if args.budget is not None:
            if document is None:
                raise InferenceError(f"--budget needs calibrated thresholds; {source} has none")
            exit_thresholds = select_budget(document, args.budget, source)
        elif document is not None:
            exit_thresholds = [float(t) for t in document["exit_thresholds"]]
        else:
            raise InferenceError(f"{source} has no thresholds: pass --thresholds T.yaml or --budget GFLOPS")
        paths, labels, folder_names = collect_images(args.inputs)
        labels = labels_in_model_order(labels, folder_names, manifest.get("class_names"), ", ".join(args.inputs))
        import mindspore as ms
        ms.set_context(mode=ms.GRAPH_MODE)
        ms.set_device(args.device_target)
        engine = EarlyExitEngine(args.model, manifest, max_batch=args.batch_size)
        begin = time.perf_counter()
        engine.warm_up()
        LOGGER.info("compiled %d exits at batch sizes %s in %.1fs", engine.num_exits, engine.buckets,
                    time.perf_counter() - begin)
        records, summary = run_inference(engine, paths, labels, exit_thresholds, args.batch_size,
                                         not args.no_compare)
    except InferenceError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.out:
        _write_results(args.out, records)
    if args.summary:
        atomic_write_text(args.summary, json.dumps(summary, indent=1))
    print(format_summary(summary, engine.num_exits))
    return 0


if __name__ == "__main__":
    sys.exit(main())
