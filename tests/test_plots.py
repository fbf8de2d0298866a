"""The Pillow-only PNG plots: the budget curve and the image grid."""
import os

import numpy as np
import pytest
from PIL import Image

from dvt_ms import plots
from dvt_ms.demo.dataset import CLASS_NAMES, generate_image


def test_budget_plot_is_a_png_of_the_requested_size(tmp_path):
    path = tmp_path / "plots" / "budget.png"
    plots.plot_budget_curve(
        path,
        curves={"DVT (early exits)": ([0.6, 0.9, 1.3, 1.8], [61.0, 66.5, 69.0, 70.2])},
        points={"exit 1 (7x7)": (0.55, 60.0), "exit 2 (10x10)": (1.1, 67.0),
                "exit 3 (14x14)": (2.2, 70.5)},
        title="Accuracy vs budget · demo")
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (800, 600)
        assert len(image.convert("RGB").getcolors(2 ** 16)) > 20  # not a blank canvas
    assert os.listdir(path.parent) == ["budget.png"]  # no temporary file left behind


def test_image_grid_lays_out_cells_with_captions(tmp_path):
    images = [generate_image(i, 0.3, np.random.default_rng(i), 32) for i in range(5)]
    captions = [f"exit {i % 3 + 1} · {CLASS_NAMES[i]} ✓" for i in range(5)]
    path = tmp_path / "grid.png"
    drawn = plots.image_grid(path, images, captions, columns=3, cell_size=64,
                             caption_colors=["green"] * 4 + ["red"])
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == drawn.size
        assert image.width >= 3 * 64 and image.height >= 2 * 64
    with pytest.raises(ValueError):
        plots.image_grid(path, images, captions[:2], columns=3, cell_size=64)


def test_nice_ticks_cover_the_range_with_round_steps():
    ticks, step = plots.nice_ticks(0.43, 2.71)
    assert ticks[0] <= 0.43 and ticks[-1] >= 2.71
    assert step in (0.5, 0.25, 0.2)
    assert np.allclose(np.diff(ticks), step)
