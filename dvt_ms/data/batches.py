"""Batches with nothing silently replaced: every sample the pipeline could not read is named.

MindSpore's pipeline runs in ``ErrorSamplesMode.REPLACE``: a sample whose decoding or transforms
fail is dropped and a copy of an earlier good sample is inserted later, so a run never stops for
one bad image and every rank keeps its batch count. The ``index`` column that every source carries
(``DatasetSplit.make_source``) shows both: the samples come in the order they were given, so a
sample that never appears before a later one did was replaced, and a sample seen twice is a copy.
``SampleTracker`` names the former and marks the latter, so evaluation can leave copies out.
"""
import collections
import logging
import os

import numpy as np

from ..errors import DataError

__all__ = ["DataFolderGoneError", "SampleTracker", "check_folder_there", "checked_batches"]

_logger = logging.getLogger(__name__)


class DataFolderGoneError(DataError):
    """The split's folder vanished while a pipeline read it (an unmounted disk, a moved folder)."""


def check_folder_there(split):
    """Raise ``DataFolderGoneError`` if ``split``'s folder is gone: every later sample would fail too."""
    cifar = getattr(split, "cifar", None)
    root = getattr(split, "root", None) or (cifar[1] if cifar else None)
    if root is not None and not os.path.isdir(root):
        raise DataFolderGoneError(f"the data folder {root} is gone (it was there when the split was opened)")


class SampleTracker:
    """Follows one pass of a pipeline over ``order`` (sample indices of ``split``, in reading order)."""

    def __init__(self, split, order, description):
        self.split = split
        self.order = np.asarray(order, np.int64)
        self.description = description
        self._position = np.full(split.num_samples, -1, np.int64)
        self._position[self.order] = np.arange(len(self.order))
        self._next = 0                  # position in order of the next sample expected
        self.replaced = []              # sample indices never delivered
        self.copies = 0

    def _replaced(self, samples):
        if len(samples):
            check_folder_there(self.split)
        for sample in samples:
            _logger.warning("%s: image %s could not be read or decoded and was replaced by a copy of another "
                            "image", self.description, self.split.describe(sample))
        self.replaced.extend(int(sample) for sample in samples)

    def update(self, index):
        """Account for a batch's ``index`` column; returns a bool mask: True for a sample's first
        delivery, False for a copy standing in for a replaced one."""
        fresh = np.zeros(len(index), bool)
        for row, sample in enumerate(np.asarray(index, np.int64)):
            position = self._position[sample] if 0 <= sample < len(self._position) else -1
            if position >= self._next:
                self._replaced(self.order[self._next:position])
                self._next = position + 1
                fresh[row] = True
        self.copies += int(np.count_nonzero(~fresh))
        return fresh

    def finish(self):
        """Name what never came; fail if a class lost every image it had in this pass."""
        self._replaced(self.order[self._next:])
        self._next = len(self.order)
        if not self.replaced:
            return
        _logger.warning("%s: %d of %d images were replaced by copies of others (named above)", self.description,
                        len(self.replaced), len(self.order))
        labels = self.split.labels
        if labels is None:
            return
        wanted = collections.Counter(labels[self.order].tolist())
        lost = collections.Counter(labels[self.replaced].tolist())
        gone = [label for label, count in lost.items() if count == wanted[label]]
        if gone:
            names = [self.split.class_names[label] if self.split.class_names else str(label) for label in gone]
            raise DataError(f"{self.description}: no image of class(es) {', '.join(names)} could be read "
                            "(each is named above); fix or remove them and run again")


def checked_batches(loader, tracker, skip_batches=0):
    """``(images, labels, fresh)`` for every batch of ``loader`` after the first ``skip_batches``
    (which are still read and checked: see ``transforms.epoch_loader``); ``fresh`` is the mask of
    ``SampleTracker.update``. The tracker's ``finish`` runs when the pass is complete."""
    try:
        for step, (images, labels, index) in enumerate(loader.create_tuple_iterator(num_epochs=1)):
            fresh = tracker.update(index.asnumpy())
            if step >= skip_batches:
                yield images, labels, fresh
    except RuntimeError:   # e.g. MindSpore's "All data is garbage" once every sample fails
        check_folder_there(tracker.split)
        raise
    tracker.finish()
