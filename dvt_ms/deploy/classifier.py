"""The Python API of deployment: an exported model directory as a classifier.

    from dvt_ms.deploy import Classifier

    classifier = Classifier("outputs/demo/mindir", budget=0.004)      # or thresholds=..., accuracy=...
    for answer in classifier.classify(["cat.jpg", pil_image, pixels], top_k=3):
        print(answer.class_name, answer.confidence, answer.exit, answer.top_k)

Images are file paths, PIL images or uint8 RGB arrays (H, W, 3); each answer gives the class
name (the index as text when the export has no class names), its index, the confidence and the
exit (1-based) that answered, with the ``top_k`` best classes on request. The thresholds are
the manifest's, a thresholds file's (bound to the exported weights, as on the command line), or
the calibrated row the contract's selection rule picks for a budget or a target accuracy.
"""
import dataclasses
import os
from typing import Tuple

import numpy as np

from ..contract.manifest import MANIFEST_NAME, load_manifest
from ..contract.thresholds import choose_thresholds, load_thresholds
from ..errors import InferenceError
from .engine import EarlyExitEngine, warn_if_made_for_another_device
from .preprocess import Preprocessor, UnreadableImageError

__all__ = ["Answer", "Classifier", "select_exit_thresholds"]


@dataclasses.dataclass(frozen=True)
class Answer:
    """One image's early-exit answer."""

    class_name: str
    class_index: int
    confidence: float
    exit: int                                   # 1-based: the exit that answered
    top_k: Tuple[Tuple[str, float], ...] = ()   # (class name, score) best first, when asked for


def select_exit_thresholds(model_dir, manifest, thresholds=None, budget=None, accuracy=None,
                           accept_thresholds_mismatch=False):
    """``(exit thresholds, chosen row or None, source)`` of an exported model: the thresholds
    file's (checked against the manifest and the weights' digest) or the manifest's, at their
    default setting or at the row the selection rule picks for ``budget`` (GFLOPs per image) or
    ``accuracy`` (%), both matched on the calibration figures."""
    if budget is not None and accuracy is not None:
        raise InferenceError("give a budget or a target accuracy, not both")
    document, source = thresholds_of(model_dir, manifest, thresholds, accept_thresholds_mismatch)
    exit_thresholds, row = choose_thresholds(document, source, budget, accuracy)
    return exit_thresholds, row, source


def thresholds_of(model_dir, manifest, thresholds=None, accept_thresholds_mismatch=False):
    """``(thresholds document, source)`` of an exported model: the thresholds file's (checked
    against the manifest and the weights' digest) or the manifest's."""
    model_source = os.path.join(model_dir, MANIFEST_NAME)
    if thresholds is not None:
        document = load_thresholds(thresholds, manifest, model_source, accept_thresholds_mismatch)
        source = str(thresholds)
    else:
        document, source = manifest.get("thresholds"), model_source
    if document is None:
        raise InferenceError(f"{source} has no thresholds: pass a thresholds file (run_eval.sh's thresholds.yaml)")
    return document, source


class Classifier:
    """Early-exit classification with the exported model in ``model_dir`` (see the module docstring).

    ``thresholds``: a thresholds file (default: the manifest's); ``budget`` / ``accuracy``: pick
    a calibrated row; ``device_target``: ``auto`` (Ascend, GPU, then CPU), ``CPU``, ``GPU`` or
    ``Ascend``; ``batch_size``: images per exit call. Loading compiles nothing; each new batch
    shape compiles on first use (``warm_up`` compiles them all at once)."""

    def __init__(self, model_dir, thresholds=None, budget=None, accuracy=None, device_target="auto",
                 batch_size=32, accept_thresholds_mismatch=False):
        from ..device import use_device
        manifest = load_manifest(model_dir)
        self.exit_thresholds, self.selected_row, self.thresholds_source = select_exit_thresholds(
            model_dir, manifest, thresholds, budget, accuracy, accept_thresholds_mismatch)
        self.device = use_device(device_target).device
        warn_if_made_for_another_device(manifest, self.device, model_dir)
        self.engine = EarlyExitEngine(model_dir, manifest, max_batch=batch_size)
        self.preprocess = Preprocessor(manifest["preprocess"])
        self.class_names = manifest.get("class_names")

    def warm_up(self):
        self.engine.warm_up()

    def classify(self, images, top_k=1):
        """An ``Answer`` per image of ``images`` (paths, PIL images or uint8 RGB arrays), in order.

        An image that cannot be read is an UnreadableImageError naming it."""
        arrays = []
        for position, image in enumerate(images):
            try:
                arrays.append(self.preprocess(image))
            except UnreadableImageError as err:
                name = image if isinstance(image, (str, os.PathLike)) else f"image {position}"
                raise UnreadableImageError(f"{name}: {err}") from None
        if not arrays:
            return []
        run = self.engine.run(self.exit_thresholds, top_k=top_k)
        run.push(np.stack(arrays))
        run.finish()
        exits, classes, confidences = run.results()
        top_classes, top_scores = run.top_k()
        return [Answer(self._name(c), int(c), float(p), int(k) + 1,
                       tuple((self._name(tc), float(ts)) for tc, ts in zip(top_classes[i], top_scores[i]))
                       if top_k > 1 else ())
                for i, (k, c, p) in enumerate(zip(exits, classes, confidences))]

    def __call__(self, image, top_k=1) -> Answer:
        """The ``Answer`` for one image."""
        return self.classify([image], top_k)[0]

    def _name(self, index) -> str:
        return self.class_names[index] if self.class_names else str(int(index))

