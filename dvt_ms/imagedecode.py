"""How an image file becomes 8-bit RGB pixels: the one rule for training, the image check and inference.

Pillow decodes; every mode is brought to 8-bit RGB (alpha dropped, palettes expanded, CMYK and
grey converted, the first frame of an animation). 16-bit samples (modes ``I;16*``, and ``I`` as
Pillow opens 16-bit PNG and TIFF files) keep their high byte, ``value >> 8`` (65535 -> 255,
4096 -> 16): that is what MindSpore's own decoder does with the 16-bit PNGs it reads in the
training pipeline, so a 16-bit image gives the same pixels whichever decoder reads it. (Pillow's
``convert("RGB")`` would clip every 16-bit value above 255 to white.) EXIF orientation is not
applied: MindSpore's decoder ignores it too.
"""
import numpy as np
from PIL import Image, UnidentifiedImageError

__all__ = ["UnreadableImageError", "decode_rgb", "to_rgb"]

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


class UnreadableImageError(ValueError):
    """An image file that cannot be decoded; the message says why (not a user error of the run:
    training leaves such files out, inference skips and reports them)."""


def to_rgb(image):
    """An opened Pillow image as an (H, W, 3) uint8 array, by the rule above."""
    if image.mode in _SIXTEEN_BIT_MODES:
        grey = (np.clip(np.asarray(image, np.int64), 0, 65535) >> 8).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    return np.asarray(image.convert("RGB"))


def decode_rgb(path):
    """The image at ``path`` as an (H, W, 3) uint8 array, or UnreadableImageError saying why not."""
    try:
        with Image.open(path) as image:
            return to_rgb(image)
    except UnidentifiedImageError:
        raise UnreadableImageError("not an image file Pillow can identify") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        # OSError: missing, unreadable or truncated file; the others: corrupt headers, huge sizes.
        raise UnreadableImageError(str(err).strip() or type(err).__name__) from None
