"""Datasets, transforms and loaders for training and calibration, through mindcv's factories."""
from .batches import DataFolderGoneError, SampleTracker, checked_batches
from .datasets import CIFAR_CLASSES, DatasetSplit, epoch_indices, open_dataset, open_training_data
from .holdout import HOLDOUT_FILE, read_holdout, write_holdout
from .imagecheck import ImageCheck, verify_image
from .transforms import build_transforms, epoch_loader, eval_transforms, make_loader, usable_workers

__all__ = ["CIFAR_CLASSES", "DataFolderGoneError", "DatasetSplit", "HOLDOUT_FILE", "ImageCheck", "SampleTracker",
           "build_transforms", "checked_batches", "epoch_indices", "epoch_loader", "eval_transforms", "make_loader",
           "open_dataset", "open_training_data", "read_holdout", "usable_workers", "verify_image", "write_holdout"]
