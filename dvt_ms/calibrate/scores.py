"""Every exit's softmax scores over a loader (what calibration and the report are computed from)."""
import logging

import numpy as np

from ..errors import DataError
from . import search

__all__ = ["exit_probabilities"]

LOGGER = logging.getLogger(__name__)


def exit_probabilities(model, loader, description):
    """Softmax scores (K, N, C) of every exit and the labels (N,) over ``loader``."""
    model.set_train(False)
    probs, labels = [], []
    for step, (images, targets) in enumerate(loader.create_tuple_iterator(num_epochs=1)):
        probs.append(np.stack([search.softmax(t.asnumpy()) for t in model(images)]))
        labels.append(targets.asnumpy())
        if step % 20 == 0:
            LOGGER.info("%s: %d images", description, sum(len(x) for x in labels))
    if not labels:
        raise DataError(f"{description}: no images")
    return np.concatenate(probs, axis=1), np.concatenate(labels).astype(np.int64)
