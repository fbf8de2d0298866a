"""Odd image inputs: what training saw is what inference sees (decode, listing), and a data folder
that misbehaves gives a warning or one clear error, never a traceback."""
import logging
import os

import mindspore.dataset as ds
import numpy as np
import pytest
from mindspore.dataset import vision
from PIL import Image

from dvt_ms.data.folders import manifest_source
from dvt_ms.data.imagecheck import list_split, verify_image
from dvt_ms.deploy.infer import collect_images
from dvt_ms.imagedecode import decode_rgb
from dvt_ms.imagefolder import class_folders, image_files


def pipeline_pixels(root, files):
    """The pixels the training pipeline decodes for ``root/files`` (manifest source, MindSpore's Decode)."""
    source = manifest_source(str(root), files, [0] * len(files), range(len(files)), 1, 1)
    source = source.map(vision.Decode(), input_columns=["image"])
    return [row["image"] for row in source.create_dict_iterator(output_numpy=True, num_epochs=1)]


def test_a_16_bit_grey_image_trains_and_infers_as_its_high_byte(tmp_path):
    """16-bit grey TIFF (decoded by Pillow) and PNG (decoded by MindSpore) give value >> 8 on every
    path: the training pipeline, the image check and inference (not clipped white, not shifted)."""
    grey16 = np.random.default_rng(0).integers(0, 65536, (24, 40)).astype(np.uint16)
    truth = np.repeat((grey16 >> 8).astype(np.uint8)[:, :, None], 3, axis=2)
    folder = tmp_path / "c0"
    folder.mkdir()
    for name in ("grey16.tif", "grey16.png"):
        Image.fromarray(grey16).save(folder / name)
        assert Image.open(folder / name).mode == "I;16"
    files = ["c0/grey16.tif", "c0/grey16.png"]
    for pixels in pipeline_pixels(tmp_path, files):
        np.testing.assert_array_equal(pixels, truth)
    for rel in files:
        assert verify_image(str(tmp_path / rel)) is None
        np.testing.assert_array_equal(decode_rgb(str(tmp_path / rel)), truth)


def animated_gif(path):
    """A two-frame GIF; its first frame, as RGB, is returned (what every path must decode)."""
    first = Image.fromarray(np.random.default_rng(1).integers(0, 255, (20, 30, 3), dtype=np.uint8)).quantize(64)
    second = Image.new("P", (30, 20), 7)
    first.save(path, save_all=True, append_images=[second], duration=100, loop=0)
    return np.asarray(Image.open(path).convert("RGB"))


def test_a_gif_in_a_folder_is_listed_and_decoded_like_one_named_on_the_command_line(tmp_path):
    folder = tmp_path / "data" / "c0"
    folder.mkdir(parents=True)
    first_frame = animated_gif(folder / "moving.gif")
    Image.fromarray(first_frame).save(folder / "still.png")
    assert image_files(folder) == [str(folder / "moving.gif"), str(folder / "still.png")]
    paths, _, _ = collect_images([str(tmp_path / "data")])
    assert str(folder / "moving.gif") in paths
    gif, png = pipeline_pixels(tmp_path / "data", ["c0/moving.gif", "c0/still.png"])
    np.testing.assert_array_equal(gif, first_frame)
    np.testing.assert_array_equal(gif, png)
    np.testing.assert_array_equal(decode_rgb(str(folder / "moving.gif")), first_frame)


def test_inference_on_a_folder_classifies_loose_images_and_those_of_its_subfolders(tmp_path, make_class_folders):
    make_class_folders(tmp_path / "mixed", 2, per_class=2)
    loose = tmp_path / "mixed" / "loose.png"
    Image.new("RGB", (8, 8)).save(loose)
    paths, labels, names = collect_images([str(tmp_path / "mixed")])
    assert len(paths) == 5 and str(loose) in paths
    assert labels is None and names is None        # not every image has a class folder: no accuracy

    (tmp_path / "with_empty" / "empty_subfolder").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "with_empty" / "a.png")
    paths, _, _ = collect_images([str(tmp_path / "with_empty")])
    assert paths == [str(tmp_path / "with_empty" / "a.png")]


def test_a_symlink_loop_in_a_data_folder_is_named_and_left_out(tmp_path, make_class_folders, caplog):
    """Training's listing and inference's both skip a looping link with a warning naming it."""
    root = tmp_path / "train"
    make_class_folders(root, 2, per_class=2)
    os.symlink("looping_class", root / "looping_class")
    os.symlink("loop.png", root / "c0" / "loop.png")
    with caplog.at_level(logging.WARNING):
        folders, files = list_split(str(root))
        paths, labels, _ = collect_images([str(root)])
    assert folders == ["c0", "c1"] and len(files) == 4 and len(paths) == 4 and labels is not None
    assert class_folders(root) == ["c0", "c1"]
    named = caplog.text
    assert str(root / "looping_class") in named and str(root / "c0" / "loop.png") in named
    assert "Too many levels of symbolic links" in named
