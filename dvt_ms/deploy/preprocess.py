"""Deployment preprocessing, driven by the manifest: an image file -> the (3, S, S) float32 the exits take.

The steps are the validation pipeline's (mindcv's evaluation transforms), with the manifest's
``preprocess`` values (docs/deployment.md):

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
import numpy as np

from ..imagedecode import UnreadableImageError, decode_rgb

__all__ = ["INTERPOLATIONS", "resize_for_crop", "UnreadableImageError", "decode_rgb", "Preprocessor"]

#: Interpolations the manifest may name: the config's choices, as MindSpore's Resize knows them.
INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "area")


def resize_for_crop(img_size, crop_pct):
    """The shorter side images are resized to before the center crop of ``img_size``: the one
    rule relating ``crop_pct`` to the manifest's ``resize`` (224 and 0.875 give 256)."""
    return round(img_size / crop_pct)


class Preprocessor:
    """``Preprocessor(manifest["preprocess"])(path)`` -> (3, img_size, img_size) float32.

    ``preprocess`` is a checked manifest section (``dvt_ms.deploy.manifest.load_manifest``)."""

    def __init__(self, preprocess):
        from mindspore.dataset import vision
        from mindspore.dataset.vision import Inter
        interpolation = getattr(Inter, preprocess["interpolation"].upper())
        self._ops = [vision.Resize(preprocess["resize"], interpolation=interpolation),
                     vision.CenterCrop(preprocess["img_size"]),
                     vision.Normalize(mean=[255.0 * m for m in preprocess["mean"]],
                                      std=[255.0 * s for s in preprocess["std"]]),
                     vision.HWC2CHW()]

    def __call__(self, path):
        """The preprocessed image, or UnreadableImageError with the reason it cannot be read."""
        pixels = decode_rgb(path)
        try:
            for op in self._ops:
                pixels = op(pixels)
        except RuntimeError as err:    # e.g. a 1-pixel-high panorama whose long side would explode
            raise UnreadableImageError(f"cannot be resized ({pixels.shape[1]}x{pixels.shape[0]} pixels): "
                                       f"{str(err).strip().splitlines()[0]}") from None
        return np.asarray(pixels, np.float32)
