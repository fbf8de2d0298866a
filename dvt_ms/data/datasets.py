"""Opening a dataset split, and which samples each rank reads in each epoch.

Datasets: ImageNet-style class folders (``root/split/class/image``) and the CIFAR-10/100 binary
batches (mindcv ``create_dataset``). Labels are class *names*: the training split's sorted class
folders define the classes (label = position), and every other split maps its folders to those
labels by name, so a renamed or missing folder can never shift labels silently.

Sample order is ours: every epoch is a permutation seeded by (seed, epoch), cut into equal
per-rank shards (``epoch_indices``); a pipeline reads exactly the samples it is given, in order.
"""
import dataclasses
import logging
import os

import mindspore.dataset as ds
import numpy as np
import yaml
from mindcv.data import create_dataset

from ..errors import DataError
from .batches import check_folder_there
from .folders import index_source, manifest_source
from .holdout import run_holdout
from .imagecheck import ImageCheck, verify_images

__all__ = ["CIFAR_CLASSES", "DatasetSplit", "epoch_indices", "open_dataset", "open_training_data"]

_logger = logging.getLogger(__name__)

CIFAR_CLASSES = {"cifar10": 10, "cifar100": 100}


@dataclasses.dataclass
class DatasetSplit:
    """An opened split: its samples, their labels and class names, and how to read some of them.

    Image folders: ``root`` with ``files`` (paths relative to it) and ``labels``. CIFAR: ``labels``
    is None.
    """

    name: str
    num_samples: int
    num_classes: int
    class_names: list = None
    root: str = None
    files: list = None
    labels: np.ndarray = None
    encoded: bool = True          # images arrive as encoded bytes (folders) or decoded HWC arrays (CIFAR)
    cifar: tuple = None           # (dataset name, folder, split) of a CIFAR split
    held_out: list = None         # training split: the files left out for calibration (holdout.py)

    def describe(self, index):
        """What sample ``index`` is, for messages: its path, or its position in a CIFAR split."""
        return os.path.join(self.root, self.files[index]) if self.files is not None else f"{self.name} #{index}"

    def make_source(self, indices, num_workers):
        """MindSpore dataset of samples ``indices`` in that order; columns image, label, index. A split
        whose folder vanished since it was opened is a ``DataFolderGoneError``."""
        check_folder_there(self)
        if self.cifar is None:
            return manifest_source(self.root, self.files, self.labels, indices, self.num_classes, num_workers)
        name, root, split = self.cifar
        dataset = create_dataset(name, root=root, split=split, shuffle=False, num_parallel_workers=num_workers)
        dataset.use_sampler(ds.SubsetSampler([int(i) for i in indices]))
        if name == "cifar100":
            dataset = dataset.project(["image", "fine_label"]).rename(["fine_label"], ["label"])
        return ds.zip((dataset, index_source(indices)))

    def subset(self, indices):
        """The samples ``indices`` (in that order) of an image-folder split, as a split of its own."""
        indices = np.asarray(indices, np.int64)
        return dataclasses.replace(self, num_samples=len(indices), files=[self.files[i] for i in indices],
                                   labels=self.labels[indices])

    def checked(self):
        """This image-folder split without the files that cannot be used, each named in a warning
        (for a few files, e.g. a calibration subset; whole splits go through ``ImageCheck``)."""
        problems = verify_images([os.path.join(self.root, rel) for rel in self.files])
        return self.subset(_report_problems(self.root, self.files, problems))


def _cifar_root(data_dir, name):
    if not os.path.isdir(data_dir):
        raise DataError(f"dataset folder {data_dir} does not exist")
    expected = "data_batch_1.bin" if name == "cifar10" else "train.bin"
    for folder, _, files in os.walk(data_dir):
        if expected in files:
            return folder
    raise DataError(f"{data_dir} does not contain the {name} binary batches (looked for {expected})")


def _report_problems(root, files, problems):
    """Positions of the usable files; every other one is named in a warning."""
    keep = []
    for position, (rel, problem) in enumerate(zip(files, problems)):
        if problem is None:
            keep.append(position)
        else:
            _logger.warning("leaving out unreadable image %s: %s", os.path.join(root, rel), problem)
    if len(keep) < len(files):
        _logger.warning("%s: left out %d of %d images (named above)", root, len(files) - len(keep), len(files))
    return keep


def _check_class_count(name, found, num_classes):
    if num_classes is not None and found != num_classes:
        raise DataError(f"{name} has {found} classes but the config says num_classes={num_classes}; "
                        f"set num_classes: {found}")


def _labels_by_name(root, folders, class_names, reference):
    """Label of each class folder of ``root``: its position in ``class_names``."""
    if class_names is None:
        return {name: label for label, name in enumerate(folders)}, folders
    known = {name: label for label, name in enumerate(class_names)}
    unknown = [name for name in folders if name not in known]
    if unknown:
        shown = ", ".join(class_names[:10]) + (", ..." if len(class_names) > 10 else "")
        raise DataError(f"{root}: class folder(s) {', '.join(unknown)} are not classes of {reference} "
                        f"({len(class_names)} classes: {shown}); every split needs the same class folder names")
    missing = [name for name in class_names if name not in set(folders)]
    if missing:
        _logger.warning("%s has no images of %d of the %d classes of %s: %s", root, len(missing), len(class_names),
                        reference, ", ".join(missing[:10]) + (", ..." if len(missing) > 10 else ""))
    return known, class_names


def _folder_split(root, class_names, reference, image_check, leave_out, num_classes):
    def check_folders(folders):
        _check_class_count(root, len(class_names) if class_names is not None else len(folders), num_classes)
        _labels_by_name(root, folders, class_names, reference)

    folders, files = image_check.split(root, check_folders)
    label_of, class_names = _labels_by_name(root, folders, class_names, reference)
    leave_out = set(leave_out)
    listed = [(rel, problem) for rel, problem in files if rel not in leave_out]
    keep = _report_problems(root, [rel for rel, _ in listed], [problem for _, problem in listed])
    kept = [listed[position][0] for position in keep]
    labels = np.array([label_of[rel.split("/", 1)[0]] for rel in kept], np.int32)
    emptied = sorted({rel.split("/", 1)[0] for rel, _ in listed} - {rel.split("/", 1)[0] for rel in kept})
    if emptied:
        raise DataError(f"{root}: no usable image left in class folder(s) {', '.join(emptied)} "
                        "(the unreadable ones are named above)")
    return DatasetSplit(root, len(kept), len(class_names), class_names=list(class_names), root=root,
                        files=kept, labels=labels)


def open_dataset(config, split, class_names=None, image_check=None, leave_out=(), reference="the training split",
                 num_classes=None):
    """The ``split`` of the configured dataset as a ``DatasetSplit`` (errors are ``DataError``).

    Image folders: ``class_names`` (None: this split's own folders define them) gives the labels by
    folder name; a folder of another name is an error naming it and ``reference`` (what the names
    come from). ``image_check`` lists and checks the files (default: checked here, without cache, as
    ``config.verify_images`` says); files in ``leave_out`` (paths relative to the split) are left out.
    ``num_classes``: the class count the model expects, checked before any image is.
    """
    if config.dataset in CIFAR_CLASSES:
        root = _cifar_root(config.data_dir, config.dataset)
        name = f"{config.dataset}/{split}"
        _check_class_count(name, CIFAR_CLASSES[config.dataset], num_classes)
        num_samples = create_dataset(config.dataset, root=root, split=split, shuffle=False).get_dataset_size()
        return DatasetSplit(name, num_samples, CIFAR_CLASSES[config.dataset], encoded=False,
                            cifar=(config.dataset, root, split))
    if image_check is None:
        image_check = ImageCheck(check=config.verify_images)
    root = os.path.join(config.data_dir, split)
    return _folder_split(root, class_names, reference, image_check, leave_out, num_classes)


def _recorded_class_names(output_dir):
    """The class names a run recorded in its config.yaml (a resumed run keeps its labels), or (None, ...)."""
    path = os.path.join(output_dir, "config.yaml")
    try:
        with open(path, encoding="utf-8") as handle:
            names = (yaml.safe_load(handle) or {}).get("class_names")
    except (OSError, yaml.YAMLError, AttributeError):
        names = None
    if not names:
        return None, "the training split"
    return list(names), f"the run being resumed ({path})"


def open_training_data(config, num_classes, image_check=None, write_records=True, previous_run=True):
    """``(train, val)`` splits of a training run (val None when ``val_every_epochs`` is 0).

    The training split's class folders (or ``config.class_names``) define the labels; there must be
    ``num_classes`` of them. The validation split maps to them by name, and the hold-out images of
    the run (``holdout.run_holdout``; recorded in ``output_dir`` when ``write_records``) are left
    out of training and listed in ``train.held_out``. ``previous_run`` False: what ``output_dir``
    recorded (class names, hold-out) belongs to a run that is being moved aside, and is not read.
    """
    if config.dataset in CIFAR_CLASSES:
        train = open_dataset(config, config.train_split, num_classes=num_classes)
        val = open_dataset(config, config.val_split) if config.val_every_epochs else None
        for split in (train, val):
            if split is not None:
                split.class_names = list(config.class_names) if config.class_names else None
        return train, val
    reference = "class_names in the config" if config.class_names else "the training split"
    names = list(config.class_names) if config.class_names else None
    if names is None and config.resume and previous_run:
        names, reference = _recorded_class_names(config.output_dir)
    train = open_dataset(config, config.train_split, names, image_check, reference=reference,
                         num_classes=num_classes)
    held_out = run_holdout(config, train, write_records, previous_run)
    if held_out:
        leave_out = set(held_out)
        train = train.subset([i for i, rel in enumerate(train.files) if rel not in leave_out])
    train.held_out = list(held_out)
    val = None
    if config.val_every_epochs:
        val = open_dataset(config, config.val_split, train.class_names, image_check, reference=reference)
    return train, val


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
