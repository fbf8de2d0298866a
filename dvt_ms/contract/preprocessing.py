"""The preprocessing record: how an image becomes the (3, S, S) float32 the exits take.

One source for the training and validation transforms (``dvt_ms.data.transforms``), export (the
manifest's ``preprocess`` section) and deployment (``dvt_ms.deploy.preprocess``):

- ``img_size``: the center crop, the graphs' input size;
- ``resize``: the shorter side before the crop, ``resize_for_crop(img_size, crop_pct)``;
- ``crop_pct``; ``interpolation`` (one of ``INTERPOLATIONS``);
- ``mean``, ``std``: three fractions of 255 each, images normalised to ``(x - 255·mean) / (255·std)``.

Each preset's defaults sit in ``PRESET_PREPROCESSING`` (as timm's ``pretrained_cfg`` sits beside a
model); a preset not listed there has ``DEFAULT_PREPROCESSING``.
"""
from ..schema import Field

__all__ = ["INTERPOLATIONS", "IMAGENET_MEAN", "IMAGENET_STD", "DEFAULT_PREPROCESSING", "PRESET_PREPROCESSING",
           "PREPROCESS_FIELDS", "preset_preprocessing", "resize_for_crop", "preprocess_record",
           "preprocess_problems"]

#: Resize interpolations, as MindSpore's Resize names them.
INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "area")

#: ImageNet statistics, as fractions of 255 (mindcv's transforms use 255 times these).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: The published models' evaluation preprocessing (docs/checkpoints.md): shorter side to 256 for
#: 224, bicubic, ImageNet statistics.
DEFAULT_PREPROCESSING = {"crop_pct": 0.875, "interpolation": "bicubic", "mean": IMAGENET_MEAN,
                         "std": IMAGENET_STD}

#: preset name -> what its preprocessing changes from ``DEFAULT_PREPROCESSING`` (every published
#: preset uses the defaults).
PRESET_PREPROCESSING = {
    "dvt_t2t_vit_12": {},
    "dvt_t2t_vit_14": {},
    "dvt_deit_small": {},
}

#: The ``preprocess`` section's fields. mean and std are fractions of 255: 123.675 (the same on
#: the 0-255 scale) is a classic slip, hence their bounds.
PREPROCESS_FIELDS = (
    Field("img_size", "int", required=True, minimum=1, doc="the center crop, the graphs' input size"),
    Field("crop_pct", "number", required=True, above=0.0, maximum=1.0, doc="img_size / resize"),
    Field("resize", "int", required=True, minimum=1, doc="the shorter side before the crop"),
    Field("interpolation", "str", required=True, choices=INTERPOLATIONS, doc="the resize filter"),
    Field("mean", "floats", required=True, length=3, minimum=0.0, maximum=1.0, doc="3 fractions of 255"),
    Field("std", "floats", required=True, length=3, above=0.0, maximum=1.0, doc="3 fractions of 255"),
)


def preset_preprocessing(preset):
    """The default crop_pct, interpolation, mean and std of ``preset`` (a fresh dict)."""
    return {**DEFAULT_PREPROCESSING, **PRESET_PREPROCESSING.get(preset, {})}


def resize_for_crop(img_size, crop_pct):
    """The shorter side images are resized to before the center crop of ``img_size``: the one rule
    relating ``crop_pct`` to ``resize`` (224 and 0.875 give 256)."""
    return round(img_size / crop_pct)


def preprocess_record(img_size, crop_pct, interpolation, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """The manifest's ``preprocess`` section (plain YAML types), ``resize`` derived by the rule."""
    return {"img_size": int(img_size), "crop_pct": float(crop_pct), "resize": resize_for_crop(img_size, crop_pct),
            "interpolation": interpolation, "mean": [float(m) for m in mean], "std": [float(s) for s in std]}


def preprocess_problems(preprocess, where="preprocess"):
    """What the fields alone cannot say about a ``preprocess`` section whose fields were checked
    (``preprocess``: its valid values): resize must follow from img_size and crop_pct."""
    if not all(key in preprocess for key in ("img_size", "crop_pct", "resize")):
        return []
    img_size, crop_pct, resize = preprocess["img_size"], preprocess["crop_pct"], preprocess["resize"]
    expected = resize_for_crop(img_size, crop_pct)
    if resize == expected:
        return []
    return [f"{where}.resize {resize} does not follow from img_size {img_size} and crop_pct {crop_pct} "
            f"(resize = round(img_size / crop_pct) = {expected}); change crop_pct and resize together"]
