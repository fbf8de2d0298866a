"""Deployment preprocessing, driven by the manifest: an image file -> the (3, S, S) float32 the exits take.

The steps are the validation pipeline's (mindcv's evaluation transforms), with the manifest's
``preprocess`` values (docs/deployment.md):

1. decode with Pillow, any mode to 8-bit RGB (alpha dropped, 16-bit grey scaled by 1/256, EXIF
   orientation not applied: the validation pipeline's decoder ignores it too);
2. resize the shorter side to ``resize`` (= ``resize_for_crop(img_size, crop_pct)``) with
   ``interpolation``, by MindSpore's own Resize kernel, the one the validation pipeline runs
   (Pillow's filters antialias and differ from it by up to 50 grey levels);
3. center crop ``img_size``; normalise to ``(x - 255·mean) / (255·std)`` in float32; HWC -> CHW.

Decoding with Pillow rather than MindSpore's decoder gives a reason a user can act on for an
unreadable file; on 8-bit JPEG, PNG, BMP and TIFF images both decoders give the same pixels
(tests/test_deploy.py compares the whole chain with the validation pipeline).
"""
import numpy as np
from PIL import Image, UnidentifiedImageError

__all__ = ["INTERPOLATIONS", "resize_for_crop", "UnreadableImageError", "decode_rgb", "Preprocessor"]

#: Interpolations the manifest may name: the config's choices, as MindSpore's Resize knows them.
INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "area")


def resize_for_crop(img_size, crop_pct):
    """The shorter side images are resized to before the center crop of ``img_size``: the one
    rule relating ``crop_pct`` to the manifest's ``resize`` (224 and 0.875 give 256)."""
    return round(img_size / crop_pct)


class UnreadableImageError(ValueError):
    """An image file that cannot be decoded; the message says why (not a user error of the run:
    inference skips and reports such files)."""


def decode_rgb(path):
    """The image at ``path`` as an (H, W, 3) uint8 array, or UnreadableImageError saying why not."""
    try:
        with Image.open(path) as image:
            if image.mode.startswith("I;16"):     # 16-bit grey: keep the high byte, as MindSpore's decoder does
                grey = (np.asarray(image, np.uint16) >> 8).astype(np.uint8)
                return np.repeat(grey[:, :, None], 3, axis=2)
            return np.asarray(image.convert("RGB"))
    except UnidentifiedImageError:
        raise UnreadableImageError("not an image file Pillow can identify") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        # OSError: missing, unreadable or truncated file; the others: corrupt headers, huge sizes.
        raise UnreadableImageError(str(err).strip() or type(err).__name__) from None


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
