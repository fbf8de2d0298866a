"""Every exit's confidence and prediction over a dataset (what calibration and the report need).

Each batch's logits are reduced as soon as they leave the model (float32 softmax, then max and
argmax: ``search.exit_scores_from_logits``), so memory grows with 2 x K numbers per image and does
not depend on the number of classes.
"""
import logging

import numpy as np

from ..data import SampleTracker, checked_batches
from ..errors import DataError
from . import search

__all__ = ["score_exits"]

LOGGER = logging.getLogger(__name__)

_LOG_EVERY_BATCHES = 20


def score_exits(model, loader, split, order, description):
    """``(ExitScores, labels)`` of the samples ``order`` of ``split`` that ``loader`` reads.

    A sample the pipeline could not decode is named and left out (its stand-in copy is not scored)."""
    model.set_train(False)
    tracker = SampleTracker(split, order, description)
    parts, labels, done = [], [], 0
    for step, (images, targets, fresh) in enumerate(checked_batches(loader, tracker)):
        scores = search.exit_scores_from_logits([logits.asnumpy() for logits in model(images)])
        parts.append(search.ExitScores(scores.confidence[:, fresh], scores.prediction[:, fresh], scores.num_classes))
        labels.append(targets.asnumpy()[fresh])
        done += len(fresh)
        if step % _LOG_EVERY_BATCHES == 0:
            LOGGER.info("%s: %d/%d images", description, done, len(order))
    if not labels or not sum(len(x) for x in labels):
        raise DataError(f"{description}: no images")
    labels = np.concatenate(labels).astype(np.int64)
    LOGGER.info("%s: %d images scored", description, len(labels))
    return search.concatenate_scores(parts), labels
