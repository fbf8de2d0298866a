"""Training data throughput: our loader beside mindcv's native ImageNet loader, in one run.

    python benchmarks/data_pipeline.py [--images 512] [--repeats 5] [--config C.yaml] [key=value ...]

Writes ``--images`` JPEGs of 500x375 (ImageNet-like; 8 classes) into a temporary folder, then
reads one training epoch of them, alternately, through
  ours:   dvt_ms.data (manifest of our epoch order, index column, checked batches), and
  mindcv: mindcv.data.create_dataset("imagenet") (ImageFolderDataset, shuffled),
both with the same transforms and batching (``build_transforms`` + mindcv ``create_loader``: the
config's RandAugment, random erasing, mixup/cutmix; batch 32 and 2 workers unless overridden).
Each epoch is timed from creating its pipeline to its last batch; the median of the repeats is
reported in images/s. The images are checked once before timing (a cached start-up cost).
"""
import os
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from dvt_ms import cli  # noqa: E402
from dvt_ms.config import load_config  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_images(root, count, classes=8, size=(500, 375), seed=0):
    """``count`` JPEGs (quality 90) of smooth random colour fields with a few shapes, ~40-60 kB each."""
    rng = np.random.default_rng(seed)
    for index in range(count):
        folder = os.path.join(root, "train", f"class_{index % classes}")
        os.makedirs(folder, exist_ok=True)
        coarse = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize(size, Image.BICUBIC)
        pixels = np.asarray(image, np.int16) + rng.integers(-12, 13, (size[1], size[0], 3))
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(
            os.path.join(folder, f"{index:05d}.jpg"), quality=90)


def ours(config, split, epoch):
    from dvt_ms.data import SampleTracker, checked_batches, epoch_indices, make_loader
    order = epoch_indices(split.num_samples, epoch, config.seed, 0, 1, shuffle=True)
    order = order[:len(order) // config.batch_size * config.batch_size]
    loader = make_loader(split, order, config, 224, 1000, is_training=True, num_workers=config.num_workers)
    return sum(len(labels) for _, labels, _ in checked_batches(loader, SampleTracker(split, order, "benchmark")))


def mindcv_native(config, root):
    from mindcv.data import create_dataset, create_loader
    from dvt_ms.data import build_transforms
    dataset = create_dataset("imagenet", root=root, split="train", shuffle=True,
                             num_parallel_workers=config.num_workers)
    loader = create_loader(
        dataset, batch_size=config.batch_size, drop_remainder=True, is_training=True, mixup=config.mixup,
        cutmix=config.cutmix, cutmix_prob=config.cutmix_prob, num_classes=1000,
        transform=build_transforms(config, 224, is_training=True, encoded=True),
        num_parallel_workers=config.num_workers,
        python_multiprocessing=config.auto_augment is not None and config.num_workers > 1)
    return sum(len(images) for images, _ in loader.create_tuple_iterator(num_epochs=1, output_numpy=True))


def main(argv=None):
    parser = cli.argument_parser("benchmarks/data_pipeline.py", __doc__)
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--config", default=os.path.join(REPO, "configs", "dvt_deit_small_imagenet.yaml"))
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    args = parser.parse_args(argv)
    import mindspore.dataset as ds
    from dvt_ms.data import open_dataset

    root = tempfile.mkdtemp(prefix="dvt-pipeline-bench-")
    try:
        write_images(root, args.images)
        overrides = {"batch_size": 32, "num_workers": 2, **cli.parse_overrides(args.overrides), "data_dir": root}
        config = load_config(args.config, overrides)
        split = open_dataset(config, "train")
        ds.config.set_error_samples_mode(ds.config.ErrorSamplesMode.REPLACE)
        rates = {"ours (dvt_ms.data)": [], "mindcv create_dataset('imagenet')": []}
        for repeat in range(args.repeats):
            for name, run in zip(rates, (lambda: ours(config, split, repeat), lambda: mindcv_native(config, root))):
                started = time.perf_counter()
                count = run()
                rates[name].append(count / (time.perf_counter() - started))
        print(f"{args.images} JPEGs 500x375, {args.config} training transforms (auto_augment "
              f"{config.auto_augment}, re_prob {config.re_prob}, mixup {config.mixup}, cutmix {config.cutmix}), "
              f"batch {config.batch_size}, {config.num_workers} workers, {args.repeats} epochs each, alternating")
        print("| loader | images/s (median) | each epoch |")
        print("|---|---|---|")
        for name, values in rates.items():
            print(f"| {name} | {statistics.median(values):.0f} | {', '.join(f'{v:.0f}' for v in values)} |")
        ours_rate, native_rate = (statistics.median(values) for values in rates.values())
        print(f"ours / mindcv: {ours_rate / native_rate:.2f}x")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
