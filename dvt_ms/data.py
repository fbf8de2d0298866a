"""Training and validation data through mindcv's factories.

Datasets: ImageNet-style class folders (``root/split/class/image``) and the CIFAR-10/100 binary
batches (mindcv ``create_dataset``). Transforms come from mindcv ``create_transforms`` (train:
RandomResizedCrop, flip, RandAugment, random erasing; eval: resize round(img_size / crop_pct),
center crop) and batching plus mixup/cutmix from mindcv ``create_loader``.

Sample order is ours, so a resumed run continues exactly where it stopped: every epoch is a
permutation seeded by (seed, epoch), cut into equal per-rank shards, from which the batches
already consumed are left out before anything is read.

Unreadable images never stop a run, and bad files are named: the folder is checked on start (PIL
header check plus, for JPEG/PNG, the end-of-image marker that truncated files lack) and bad files
are left out with a warning naming each; a file that goes bad later (or any file, with
``verify_images: false``) is checked the same way as it is read and replaced by the next image
with a warning; whatever still fails to decode is replaced by another sample by MindSpore
(ErrorSamplesMode.REPLACE, logged by MindSpore). Replacing rather than dropping keeps every
rank's batch count equal.
"""
import concurrent.futures
import dataclasses
import logging
import os

import mindspore.dataset as ds
import numpy as np
from mindcv.data import create_dataset, create_loader, create_transforms
from mindspore.dataset import vision
from PIL import Image

__all__ = ["DataError", "ImageFolderSource", "DatasetSplit", "open_dataset", "epoch_indices",
           "build_transforms", "eval_transforms", "make_loader", "verify_image"]

_logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
CIFAR_CLASSES = {"cifar10": 10, "cifar100": 100}
# format: (leading magic bytes, marker a complete file ends with). Some writers pad after the end
# marker, so it is looked for in the last kilobyte rather than in the last bytes only.
_COMPLETE_FILE_MARKERS = {"JPEG": (b"\xff\xd8", b"\xff\xd9"), "PNG": (b"\x89PNG", b"IEND")}
_TAIL_BYTES = 1024


class DataError(RuntimeError):
    """The dataset cannot be used as configured; raised before training starts."""


def _truncation(head, tail):
    """Why an encoded image whose first bytes are ``head`` and last kilobyte ``tail`` is incomplete, or None."""
    if not head:
        return "empty file"
    for name, (magic, end_marker) in _COMPLETE_FILE_MARKERS.items():
        if head.startswith(magic) and end_marker not in tail:
            return f"truncated {name} (no end-of-image marker)"
    return None


def verify_image(path):
    """None if ``path`` looks like a complete, readable image, else the reason it is not.

    Reads the header (PIL ``verify``) and the last kilobyte; a full decode is left to the pipeline.
    """
    try:
        with Image.open(path) as image:
            image.verify()
        with open(path, "rb") as f:
            head = f.read(8)
            f.seek(max(0, os.path.getsize(path) - _TAIL_BYTES))
            return _truncation(head, f.read())
    except Exception as error:  # PIL raises many types for bad files; all mean "unreadable"
        return f"{type(error).__name__}: {error}"


class ImageFolderSource:
    """Random-access source over ``root/class/*.jpg`` yielding (encoded bytes, label).

    Classes are the sorted sub-folder names (label = position), files the sorted image files. A
    missing folder, no class folders or an empty class folder is a ``DataError``. With ``verify``,
    unreadable files are left out and each is named in a warning.
    """

    column_names = ["image", "label"]

    def __init__(self, root, verify=True, num_threads=16):
        if not os.path.isdir(root):
            raise DataError(f"dataset folder {root} does not exist")
        self.classes = sorted(entry.name for entry in os.scandir(root)
                              if entry.is_dir() and not entry.name.startswith("."))
        if not self.classes:
            raise DataError(f"{root} has no class folders (expected {root}/<class>/<image>)")
        samples = []
        for label, name in enumerate(self.classes):
            folder = os.path.join(root, name)
            files = sorted(entry.name for entry in os.scandir(folder)
                           if entry.is_file() and entry.name.lower().endswith(IMAGE_EXTENSIONS))
            if not files:
                raise DataError(f"class folder {folder} has no images ({', '.join(IMAGE_EXTENSIONS)})")
            samples.extend((os.path.join(folder, file), label) for file in files)
        if verify:
            samples = self._drop_unreadable(samples, root, num_threads)
        self.samples = samples

    @staticmethod
    def _drop_unreadable(samples, root, num_threads):
        with concurrent.futures.ThreadPoolExecutor(num_threads) as pool:
            problems = list(pool.map(verify_image, (path for path, _ in samples)))
        kept = []
        for (path, label), problem in zip(samples, problems):
            if problem is None:
                kept.append((path, label))
            else:
                _logger.warning("skipping unreadable image %s: %s", path, problem)
        if len(kept) < len(samples):
            _logger.warning("%s: left out %d of %d images", root, len(samples) - len(kept), len(samples))
        if not kept:
            raise DataError(f"{root}: no readable images")
        return kept

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, index):
        # A file that cannot be read or is visibly cut off is named and replaced by the next one, so
        # every rank still yields the same number of samples.
        for offset in range(len(self.samples)):
            path, label = self.samples[(index + offset) % len(self.samples)]
            try:
                with open(path, "rb") as f:
                    data = f.read()
                problem = _truncation(data[:8], data[-_TAIL_BYTES:])
            except OSError as error:
                problem = error.strerror or str(error)
            if problem is None:
                return np.frombuffer(data, dtype=np.uint8), np.int32(label)
            _logger.warning("skipping unreadable image %s: %s; the next image takes its place", path, problem)
        raise DataError("no image of the dataset can be read")


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


def _for_decoded_images(transforms):
    """mindcv's ImageNet transforms start by decoding; CIFAR images arrive decoded."""
    adapted = []
    for op in transforms:
        if isinstance(op, vision.Decode):
            continue
        if isinstance(op, vision.RandomCropDecodeResize):
            op = vision.RandomResizedCrop(op.size, op.scale, op.ratio, op.interpolation, op.max_attempts)
        adapted.append(op)
    return adapted


def build_transforms(config, img_size, is_training, encoded):
    """mindcv's ImageNet train or eval transforms for ``img_size`` inputs."""
    if is_training:
        transforms = create_transforms(
            "imagenet", image_resize=img_size, is_training=True, auto_augment=config.auto_augment,
            scale=config.scale, ratio=config.ratio, hflip=config.hflip, interpolation=config.interpolation,
            re_prob=config.re_prob)
    else:
        transforms = eval_transforms(img_size, config.crop_pct, config.interpolation)
    return transforms if encoded else _for_decoded_images(transforms)


def eval_transforms(img_size, crop_pct, interpolation):
    """mindcv's evaluation transforms of encoded images: decode, resize to round(img_size / crop_pct)
    (256 for 224), center crop, normalise. The deployment engine applies the very same ops."""
    resize = round(img_size / crop_pct)
    # mindcv resizes to floor(img_size / crop_pct); this crop_pct makes that exactly `resize`.
    return create_transforms("imagenet", image_resize=img_size, is_training=False,
                             crop_pct=img_size / (resize + 0.5), interpolation=interpolation)


def make_loader(data, indices, config, img_size, num_classes, is_training, num_workers):
    """Batched pipeline over ``indices`` of ``data`` (mindcv ``create_loader``).

    Training drops the last partial batch (every rank runs the same number of steps) and applies
    mixup/cutmix, which turns labels into soft targets.
    """
    ds.config.set_error_samples_mode(ds.config.ErrorSamplesMode.REPLACE)
    transforms = build_transforms(config, img_size, is_training, data.encoded)
    # RandAugment is Python code: worker processes keep it from serialising on the GIL.
    python_ops = is_training and config.auto_augment is not None and num_workers > 1
    return create_loader(
        data.make_source(indices), batch_size=config.batch_size, drop_remainder=is_training,
        is_training=is_training, mixup=config.mixup if is_training else 0.0,
        cutmix=config.cutmix if is_training else 0.0, cutmix_prob=config.cutmix_prob,
        num_classes=num_classes, transform=transforms, num_parallel_workers=num_workers,
        python_multiprocessing=python_ops)
