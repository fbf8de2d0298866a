"""Every test runs on CPU in GRAPH_MODE, the mode used on Ascend.

Markers: ``slow`` marks training runs, exports and the end-to-end runs (demo, msrun, resume, CLI
pipelines); ``-m "not slow"`` gives the fast set (forward parity, units, errors) in about two minutes. The golden files live in ``tests/golden`` (see its README).
"""
import colorsys
import pathlib

import mindspore as ms
import numpy as np
import pytest
from PIL import Image

GOLDEN = pathlib.Path(__file__).resolve().parent / "golden"

ms.set_context(mode=ms.GRAPH_MODE)
ms.set_device("CPU")


@pytest.fixture(autouse=True)
def default_layer_kernels():
    """Every test starts with the library's default GELU/LayerNorm ops: a command run in-process
    (training, calibration) switches the device's kernels on for the layers built after it."""
    from dvt_ms.models.layers import use_cpu_kernels, use_fused_gelu
    use_cpu_kernels(False)
    use_fused_gelu(False)
    yield


@pytest.fixture(scope="session")
def golden_dir():
    return GOLDEN


@pytest.fixture(scope="session")
def converted_dir(tmp_path_factory):
    """One directory for golden checkpoints converted once per session."""
    return tmp_path_factory.mktemp("converted")


def write_class_folders(root, num_classes, per_class, size=32, seed=0):
    """``root/c<k>/<i>.png``: noisy images of class k's own colour, learnable within a few steps.

    ``size`` is a side in pixels or a (low, high) range each image's width and height are drawn
    from. Returns the paths and labels, class by class."""
    rng = np.random.default_rng(seed)
    root = pathlib.Path(root)
    paths, labels = [], []
    for label in range(num_classes):
        colour = 255 * np.array(colorsys.hsv_to_rgb(label / num_classes, 0.8, 0.85), np.float32)
        folder = root / f"c{label}"
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            width, height = (size, size) if isinstance(size, int) else rng.integers(size[0], size[1], 2)
            pixels = colour + rng.normal(0, 40, (int(height), int(width), 3))
            path = folder / f"{index:03d}.png"
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path)
            paths.append(path)
            labels.append(label)
    return paths, np.array(labels)


@pytest.fixture(scope="session")
def make_class_folders():
    """The one way tests make image folders: ``make_class_folders(root, num_classes, per_class, size, seed)``."""
    return write_class_folders
