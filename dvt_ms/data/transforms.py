"""Transforms and batching through mindcv's factories.

Training: RandomResizedCrop, flip, RandAugment, random erasing (mindcv ``create_transforms``),
batching plus mixup/cutmix (``create_loader``). Evaluation: resize round(img_size / crop_pct),
center crop, normalise. Both normalise, and evaluation resizes and crops, by the contract's
preprocessing record (``dvt_ms.contract.preprocessing``), the one export writes into the manifest. A sample whose reading, decoding or transforms fail is replaced by another
one (ErrorSamplesMode.REPLACE) and named by ``batches.SampleTracker``.
"""
import logging
import multiprocessing

import mindspore.dataset as ds
import numpy as np
from mindcv.data import create_loader, create_transforms
from mindspore.dataset import vision

from ..contract.preprocessing import preprocess_record, preset_preprocessing

__all__ = ["build_transforms", "epoch_loader", "eval_transforms", "make_loader", "run_preprocessing",
           "usable_workers"]

_logger = logging.getLogger(__name__)
_capped = set()   # num_workers values already warned about (one warning per value and process)


def usable_workers(num_workers):
    """``num_workers`` capped at the machine's CPU count (MindSpore refuses more), with a warning naming the key."""
    cores = multiprocessing.cpu_count()   # the count MindSpore checks num_parallel_workers against
    if num_workers <= cores:
        return num_workers
    if num_workers not in _capped:
        _capped.add(num_workers)
        _logger.warning("num_workers %d exceeds the %d CPU core(s) of this machine: using %d (set num_workers: %d "
                        "to silence this)", num_workers, cores, cores, cores)
    return cores


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


def run_preprocessing(config, img_size):
    """The run's preprocessing record: the config's crop_pct and interpolation, the preset's mean
    and std (what export writes into the manifest)."""
    defaults = preset_preprocessing(config.model)
    return preprocess_record(img_size, config.crop_pct, config.interpolation, defaults["mean"], defaults["std"])


def build_transforms(config, img_size, is_training, encoded):
    """mindcv's ImageNet train or eval transforms for ``img_size`` inputs."""
    preprocess = run_preprocessing(config, img_size)
    if is_training:
        transforms = create_transforms(
            "imagenet", image_resize=img_size, is_training=True, auto_augment=config.auto_augment,
            scale=config.scale, ratio=config.ratio, hflip=config.hflip, interpolation=preprocess["interpolation"],
            re_prob=config.re_prob, mean=_scaled(preprocess["mean"]), std=_scaled(preprocess["std"]))
    else:
        transforms = eval_transforms(preprocess)
    return transforms if encoded else _for_decoded_images(transforms)


def _scaled(fractions):
    """mindcv normalises with statistics on the 0-255 scale."""
    return [255.0 * value for value in fractions]


def eval_transforms(preprocess):
    """mindcv's evaluation transforms of encoded images for a preprocessing record: decode, resize
    to ``resize`` (256 for 224), center crop, normalise. The deployment engine applies the very same ops."""
    img_size, resize = preprocess["img_size"], preprocess["resize"]
    # mindcv resizes to floor(img_size / crop_pct); this crop_pct makes that exactly `resize`.
    return create_transforms("imagenet", image_resize=img_size, is_training=False,
                             crop_pct=img_size / (resize + 0.5), interpolation=preprocess["interpolation"],
                             mean=_scaled(preprocess["mean"]), std=_scaled(preprocess["std"]))


def make_loader(data, indices, config, img_size, num_classes, is_training, num_workers):
    """Batched pipeline over samples ``indices`` of ``data`` in that order (mindcv ``create_loader``);
    columns image, label, index (see ``batches.checked_batches``).

    Training drops the last partial batch (every rank runs the same number of steps) and applies
    mixup/cutmix, which turns labels into soft targets.
    """
    ds.config.set_error_samples_mode(ds.config.ErrorSamplesMode.REPLACE)
    num_workers = usable_workers(num_workers)
    transforms = build_transforms(config, img_size, is_training, data.encoded)
    # RandAugment is Python code: worker processes keep it from serialising on the GIL.
    python_ops = is_training and config.auto_augment is not None and num_workers > 1
    return create_loader(
        data.make_source(indices, num_workers), batch_size=config.batch_size, drop_remainder=is_training,
        is_training=is_training, mixup=config.mixup if is_training else 0.0,
        cutmix=config.cutmix if is_training else 0.0, cutmix_prob=config.cutmix_prob,
        num_classes=num_classes, transform=transforms, num_parallel_workers=num_workers,
        python_multiprocessing=python_ops)


def epoch_loader(data, order, consumed_batches, config, img_size, num_classes, seed):
    """``(loader, order it reads, batches to skip)`` for a training epoch over ``order`` of which
    ``consumed_batches`` were trained on before a resume; augmentation is seeded with ``seed``.

    With one worker MindSpore's random ops draw in a fixed order, so the epoch's pipeline is
    replayed from its start and the consumed batches are read but skipped: the batches after a
    resume are bit-identical to an uninterrupted run's. With more workers the draws follow thread
    timing (not reproducible even without a resume), so the pipeline starts at the first batch not
    trained on, with the same seed: the same samples in the same batches, fresh augmentation draws.
    """
    # Augmentation (MindSpore ops, Python ops) and mixup (numpy) randomness.
    ds.config.set_seed(seed)
    np.random.seed(seed)
    replay = usable_workers(config.num_workers) == 1
    start = 0 if replay else consumed_batches * config.batch_size
    order = np.asarray(order)[start:]
    loader = make_loader(data, order, config, img_size, num_classes, is_training=True,
                         num_workers=config.num_workers)
    return loader, order, consumed_batches if replay else 0
