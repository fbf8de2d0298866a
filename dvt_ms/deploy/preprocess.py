"""Deployment preprocessing, driven by the manifest: an image (a file, a PIL image or an array) ->
the (3, S, S) float32 the exits take.

The steps are the validation pipeline's (mindcv's evaluation transforms), with the manifest's
``preprocess`` record (``dvt_ms.contract.preprocessing``; docs/deployment.md):

1. decode by the project's one rule (``dvt_ms.imagedecode``, shared with training and the image
   check): Pillow, any mode to 8-bit RGB, 16-bit samples keep their high byte;
2. resize the shorter side to ``resize`` (= ``resize_for_crop(img_size, crop_pct)``) with
   ``interpolation``, by MindSpore's own Resize kernel, the one the validation pipeline runs
   (Pillow's filters antialias and differ from it by up to 50 grey levels);
3. center crop ``img_size``; normalise to ``(x - 255·mean) / (255·std)`` in float32; HWC -> CHW.

Decoding with Pillow rather than MindSpore's decoder gives a reason a user can act on for an
unreadable file; on 8-bit JPEG, PNG, BMP and TIFF images both decoders give the same pixels
(tests/test_deploy.py compares the whole chain with the validation pipeline).
"""
import os

import numpy as np
from PIL import Image

from ..imagedecode import UnreadableImageError, decode_rgb, to_rgb

__all__ = ["UnreadableImageError", "decode_rgb", "rgb_pixels", "Preprocessor"]


def rgb_pixels(image):
    """(H, W, 3) uint8 RGB pixels of ``image``: a file path, a PIL image, or an array already
    decoded ((H, W, 3) RGB or (H, W) grey, uint8), by the one decode rule. UnreadableImageError says why not."""
    if isinstance(image, (str, os.PathLike)):
        return decode_rgb(image)
    if isinstance(image, Image.Image):
        return to_rgb(image)
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
            raise UnreadableImageError(f"expected an (H, W, 3) RGB or (H, W) grey uint8 array, got "
                                       f"{image.dtype} {image.shape}")
        return np.repeat(image[:, :, None], 3, axis=2) if image.ndim == 2 else image
    raise UnreadableImageError(f"expected a file path, a PIL image or a uint8 array, got {type(image).__name__}")


class Preprocessor:
    """``Preprocessor(manifest["preprocess"])(image)`` -> (3, img_size, img_size) float32, for an
    image file path, a PIL image or a uint8 RGB array (``rgb_pixels``).

    ``preprocess`` is a checked manifest section (``dvt_ms.contract.manifest.load_manifest``)."""

    def __init__(self, preprocess):
        from mindspore.dataset import vision
        from mindspore.dataset.vision import Inter
        interpolation = getattr(Inter, preprocess["interpolation"].upper())
        self._ops = [vision.Resize(preprocess["resize"], interpolation=interpolation),
                     vision.CenterCrop(preprocess["img_size"]),
                     vision.Normalize(mean=[255.0 * m for m in preprocess["mean"]],
                                      std=[255.0 * s for s in preprocess["std"]]),
                     vision.HWC2CHW()]

    def __call__(self, image):
        """The preprocessed image, or UnreadableImageError with the reason it cannot be read."""
        pixels = rgb_pixels(image)
        try:
            for op in self._ops:
                pixels = op(pixels)
        except RuntimeError as err:    # e.g. a 1-pixel-high panorama whose long side would explode
            raise UnreadableImageError(f"cannot be resized ({pixels.shape[1]}x{pixels.shape[0]} pixels): "
                                       f"{str(err).strip().splitlines()[0]}") from None
        return np.asarray(pixels, np.float32)
