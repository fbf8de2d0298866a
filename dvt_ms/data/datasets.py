"""Opening a dataset split, and which samples each rank reads in each epoch.

Datasets: ImageNet-style class folders (``root/split/class/image``) and the CIFAR-10/100 binary
batches (mindcv ``create_dataset``). Sample order is ours, so a resumed run continues exactly where
it stopped: every epoch is a permutation seeded by (seed, epoch), cut into equal per-rank shards,
from which the batches already consumed are left out before anything is read.
"""
import dataclasses
import os

import mindspore.dataset as ds
import numpy as np
from mindcv.data import create_dataset

from ..errors import DataError
from .folders import ImageFolderSource

__all__ = ["CIFAR_CLASSES", "DatasetSplit", "open_dataset", "epoch_indices"]

CIFAR_CLASSES = {"cifar10": 10, "cifar100": 100}


@dataclasses.dataclass
class DatasetSplit:
    """An opened split: how many samples and classes, and how to make a pipeline over some of them."""

    name: str
    num_samples: int
    num_classes: int
    encoded: bool           # images arrive as encoded bytes (folders) or decoded HWC arrays (CIFAR)
    make_source: object     # indices -> MindSpore dataset of those samples, columns image and label


def _cifar_root(data_dir, name):
    if not os.path.isdir(data_dir):
        raise DataError(f"dataset folder {data_dir} does not exist")
    expected = "data_batch_1.bin" if name == "cifar10" else "train.bin"
    for folder, _, files in os.walk(data_dir):
        if expected in files:
            return folder
    raise DataError(f"{data_dir} does not contain the {name} binary batches (looked for {expected})")


def open_dataset(config, split, num_workers):
    """The ``split`` of the configured dataset as a ``DatasetSplit`` (errors are ``DataError``)."""
    if config.dataset in CIFAR_CLASSES:
        root = _cifar_root(config.data_dir, config.dataset)
        num_samples = create_dataset(config.dataset, root=root, split=split, shuffle=False).get_dataset_size()

        def make_source(indices):
            dataset = create_dataset(config.dataset, root=root, split=split, shuffle=False,
                                     num_parallel_workers=num_workers)
            dataset.use_sampler(ds.SubsetSampler(indices.tolist()))
            if config.dataset == "cifar100":
                dataset = dataset.project(["image", "fine_label"]).rename(["fine_label"], ["label"])
            return dataset

        return DatasetSplit(f"{config.dataset}/{split}", num_samples, CIFAR_CLASSES[config.dataset],
                            encoded=False, make_source=make_source)

    root = os.path.join(config.data_dir, split)
    folder = ImageFolderSource(root, verify=config.verify_images)

    def make_source(indices):
        return ds.GeneratorDataset(folder, column_names=folder.column_names, sampler=indices.tolist(),
                                   num_parallel_workers=num_workers, python_multiprocessing=False)

    return DatasetSplit(root, len(folder), len(folder.classes), encoded=True, make_source=make_source)


def epoch_indices(num_samples, epoch, seed, rank, world_size, shuffle):
    """The sample indices rank ``rank`` reads in ``epoch``.

    Training (shuffle): a permutation seeded by (seed, epoch), cut so every rank gets the same
    number of samples. Evaluation: every sample exactly once across ranks.
    """
    if not shuffle:
        return np.arange(rank, num_samples, world_size)
    order = np.random.default_rng([seed, epoch]).permutation(num_samples)
    per_rank = num_samples // world_size
    return order[rank * per_rank:(rank + 1) * per_rank]
