"""Deployment preprocessing: driven by the manifest, pixel for pixel the validation pipeline."""
import numpy as np
import pytest
from PIL import Image

from dvt_ms.contract.preprocessing import (IMAGENET_MEAN, IMAGENET_STD, INTERPOLATIONS, preprocess_record,
                                           resize_for_crop)
from dvt_ms.deploy.preprocess import Preprocessor, UnreadableImageError


def _photo(height, width, seed):
    """Smooth colour fields, a sharp-edged block and noise: what resampling filters disagree on."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([128 + 90 * np.sin(x / (7 + 2 * c) + c) * np.cos(y / 11) for c in range(3)], -1)
    pixels[height // 3:height // 2, width // 4:width // 2] = (250, 10, 30)
    pixels += rng.normal(0, 20, pixels.shape)
    return np.clip(pixels, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def image_files(tmp_path_factory):
    """Images in the formats and modes inference meets, in sizes that are down- and upscaled."""
    root = tmp_path_factory.mktemp("formats")
    photo = Image.fromarray(_photo(375, 500, 0))
    grey16 = Image.fromarray((np.random.default_rng(1).random((90, 120)) * 65535).astype(np.uint16))
    files = {
        "photo.jpg": lambda p: photo.save(p, quality=90),
        "progressive_444.jpg": lambda p: photo.save(p, quality=75, progressive=True, subsampling=0),
        "cmyk.jpg": lambda p: photo.convert("CMYK").save(p),
        "grey.jpg": lambda p: photo.convert("L").save(p),
        "portrait.png": lambda p: Image.fromarray(_photo(300, 200, 2)).save(p),
        "tiny.png": lambda p: Image.fromarray(_photo(40, 30, 3)).save(p),
        "rgba.png": lambda p: photo.convert("RGBA").save(p),
        "palette.png": lambda p: photo.convert("P").save(p),
        "grey16.png": lambda p: grey16.save(p),
        "photo.bmp": lambda p: photo.save(p),
        "photo.tif": lambda p: photo.save(p),
    }
    paths = []
    for name, write in files.items():
        write(root / name)
        paths.append(str(root / name))
    return paths


def _preprocess(img_size, crop_pct, interpolation, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    return preprocess_record(img_size, crop_pct, interpolation, mean, std)


def _validation_pipeline(path, preprocess):
    """The validation pipeline's own ops (mindcv's evaluation transforms) on the file's bytes."""
    from dvt_ms.data.transforms import eval_transforms
    data = np.fromfile(path, np.uint8)
    for op in eval_transforms(preprocess):
        data = op(data)
    return data


@pytest.mark.parametrize("interpolation", INTERPOLATIONS)
def test_preprocessing_equals_the_validation_pipeline(image_files, interpolation):
    for img_size, crop_pct in ((224, 0.875), (64, 0.9), (32, 1.0)):
        record = _preprocess(img_size, crop_pct, interpolation)
        preprocess = Preprocessor(record)
        for path in image_files:
            expected = _validation_pipeline(path, record)
            assert expected.shape == (3, img_size, img_size)
            np.testing.assert_array_equal(preprocess(path), expected, err_msg=f"{path} {img_size} {crop_pct}")


def test_the_manifest_drives_normalisation_and_resize(image_files):
    path = image_files[0]
    imagenet = Preprocessor(_preprocess(64, 0.875, "bicubic"))(path)
    raw = Preprocessor(_preprocess(64, 0.875, "bicubic", mean=[0, 0, 0], std=[1, 1, 1]))(path)
    halves = Preprocessor(_preprocess(64, 0.875, "bicubic", mean=[0.5, 0.5, 0.5], std=[0.25, 0.5, 1.0]))(path)
    pixels = 255 * raw
    assert 0 <= raw.min() and raw.max() <= 1 and raw.std() > 0.1
    mean, std = np.float32(IMAGENET_MEAN)[:, None, None], np.float32(IMAGENET_STD)[:, None, None]
    np.testing.assert_allclose(imagenet, (pixels - 255 * mean) / (255 * std), atol=1e-4)
    np.testing.assert_allclose(halves, (pixels - 127.5) / (255 * np.float32([0.25, 0.5, 1.0])[:, None, None]),
                               atol=1e-4)
    # a smaller crop_pct resizes less far down: the crop shows a smaller part of the image, larger
    wide = Preprocessor(_preprocess(64, 1.0, "bicubic", mean=[0, 0, 0], std=[1, 1, 1]))(path)
    assert wide.shape == raw.shape and np.abs(wide - raw).mean() > 0.01


def test_pil_images_and_pixel_arrays_preprocess_like_their_files(image_files):
    preprocess = Preprocessor(_preprocess(64, 0.875, "bicubic"))
    for path in image_files:
        with Image.open(path) as image:
            from_file = preprocess(path)
            np.testing.assert_array_equal(preprocess(image), from_file, err_msg=path)
            if image.mode == "RGB":
                np.testing.assert_array_equal(preprocess(np.asarray(image)), from_file, err_msg=path)
            if image.mode == "L":
                np.testing.assert_array_equal(preprocess(np.asarray(image)), from_file, err_msg=path)
    with pytest.raises(UnreadableImageError, match=r"uint8 array, got float32 \(8, 8, 3\)"):
        preprocess(np.zeros((8, 8, 3), np.float32))


def test_training_normalises_with_the_record_export_writes():
    """The training transforms take mean and std from the same record as the manifest."""
    from types import SimpleNamespace
    from mindspore.dataset import vision
    from dvt_ms.data.transforms import build_transforms
    config = SimpleNamespace(model="dvt_deit_small", crop_pct=0.875, interpolation="bicubic", auto_augment=None,
                             scale=(0.08, 1.0), ratio=(0.75, 1.333), hflip=0.5, re_prob=0.0)
    for is_training in (True, False):
        normalise = [op for op in build_transforms(config, 64, is_training, encoded=True)
                     if isinstance(op, vision.Normalize)]
        assert len(normalise) == 1
        assert list(normalise[0].mean) == [255.0 * m for m in IMAGENET_MEAN]
        assert list(normalise[0].std) == [255.0 * s for s in IMAGENET_STD]


def test_resize_rule_is_the_validation_pipelines():
    assert resize_for_crop(224, 0.875) == 256 and resize_for_crop(224, 0.9) == 249 and resize_for_crop(64, 1.0) == 64


def test_unreadable_images_say_why(tmp_path, image_files):
    photo = open(image_files[0], "rb").read()
    cases = {
        "truncated.jpg": (photo[:len(photo) // 2], "truncated"),
        "garbage.png": (b"\x89PNG\r\n\x1a\n" + b"garbage" * 10, "(?i)truncated"),
        "empty.jpg": (b"", "not an image file"),
        "text.jpg": (b"hello, I am not a picture\n", "not an image file"),
    }
    preprocess = Preprocessor(_preprocess(32, 0.875, "bilinear"))
    for name, (content, reason) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(UnreadableImageError, match=reason) as caught:
            preprocess(str(tmp_path / name))
        assert "Dataset Pipeline" not in str(caught.value) and "\n" not in str(caught.value)
    with pytest.raises(UnreadableImageError, match="No such file"):
        preprocess(str(tmp_path / "missing.jpg"))
