"""Datasets, transforms and loaders for training and calibration, through mindcv's factories."""
from .datasets import CIFAR_CLASSES, DatasetSplit, epoch_indices, open_dataset
from .folders import ImageFolderSource, verify_image
from .transforms import build_transforms, eval_transforms, make_loader

__all__ = ["CIFAR_CLASSES", "DatasetSplit", "ImageFolderSource", "build_transforms", "epoch_indices",
           "eval_transforms", "make_loader", "open_dataset", "verify_image"]
