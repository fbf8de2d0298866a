"""A download-free synthetic image dataset whose images range from easy to hard, for the demo.

DVT's whole point is that natural images differ in difficulty: a large, centred, clean object can
be recognised from a coarse 7x7 token grid, a small object in clutter needs the finer grids. This
module renders shapes (circle, ring, star, ...) with a per-image ``difficulty`` in [0, 1] that
moves every factor that makes photos hard at once:

=================  ===============================  ================================
factor             difficulty 0 (easy)              difficulty 1 (hard)
=================  ===============================  ================================
object size        ~80% of the image side           ~34% of the image side
position           centred                          anywhere that keeps it in frame
contrast           large lightness gap (0.55)       small lightness gap (0.22)
background         flat                             gradient + blotchy texture
clutter            none                             ~5 distractor lines and blobs
occlusion          never                            45% of images, a blob over part
pixel noise        faint (std 2 of 255)             strong (std 14 of 255)
=================  ===============================  ================================

Each image's difficulty is drawn from Beta(1, 2.5): mostly easy images with a long tail of hard
ones, as in natural photo collections. It is recorded in ``difficulty.json``. The numbers above
are ``DEFAULT_PROFILE``, a ``DifficultyProfile``; a profile is part of the dataset's manifest.

Colours are drawn independently of the class (random hue, random light-on-dark or dark-on-light),
so only shape identifies the class. Distractors are lines and irregular blobs, never one of the
class shapes, so every label is unambiguous.

Everything is deterministic: each image has its own generator seeded from
``(seed, split, class, index)``, so an image does not depend on how many others were generated.

``write_dataset`` lays the images out ImageNet style (``root/{train,val[,calib]}/<class>/*.png``) so the
ordinary folder loaders read it. Command line::

    python -m dvt_ms.demo.dataset ROOT [--train_per_class N] [--val_per_class N] [--calib_per_class N]
                                       [--image_size S] [--seed S] [--num_classes N]
"""
import colorsys
import dataclasses
import json
import logging
import math
import os
import pathlib
import shutil
import sys
import tempfile

import numpy as np
from PIL import Image, ImageDraw

from .. import cli
from ..errors import DVTError
from ..fileio import apply_umask_modes
from ..schema import Field, check_fields, raise_problems

__all__ = [
    "CLASS_NAMES", "DEFAULT_PROFILE", "DatasetMismatchError", "DifficultyProfile", "generate_image",
    "generate_sample", "PARAMETERS", "write_dataset", "read_manifest",
]

logger = logging.getLogger(__name__)

# Sorted, so that the folder order ImageNet-style loaders use equals the index order here.
CLASS_NAMES = ("circle", "crescent", "cross", "ring", "square", "star", "stripes", "triangle")
assert list(CLASS_NAMES) == sorted(CLASS_NAMES)

# Bump whenever rendering changes: an old dataset on disk then no longer matches its manifest.
GENERATOR_VERSION = 2
MANIFEST_NAME = "dataset.json"
DIFFICULTY_NAME = "difficulty.json"
# "calib": held-out images for threshold calibration (index order fixes the per-image seeds).
SPLITS = ("train", "val", "calib")

# Shapes are drawn this many times larger and box-filtered down, which antialiases their edges.
SUPERSAMPLE = 4


class DatasetMismatchError(DVTError):
    """The dataset root exists but holds something other than the requested dataset."""


# --------------------------------------------------------------------------------------------
# How difficulty maps to rendering factors
# --------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class DifficultyProfile:
    """How hard the dataset is: the rendering factors at difficulty 0 and 1, and how often each occurs.

    Pairs are ``(easy, hard)``: the value at difficulty 0 and at 1, linear in between.
    ``difficulty_beta``: the Beta(a, b) distribution images draw their difficulty from.
    ``radius``: object radius as a fraction of the image side (x U(0.9, 1.1) per image).
    ``lightness_gap``: object-background HLS lightness difference (x U(0.85, 1.15) per image).
    ``clutter``: mean distractor count at difficulty 1 (Poisson, mean clutter * difficulty^1.5).
    ``occlusion``: probability of an occluding blob at difficulty 1 (occlusion * difficulty^2).
    ``noise``: Gaussian pixel noise std in 0..255 units.
    ``placement_exponent``: position and rotation freedom grow as difficulty ** placement_exponent
    (below 1: objects leave the centre and turn early, which a coarse token grid copes with worst).
    """
    difficulty_beta: tuple = (1.0, 2.5)
    radius: tuple = (0.40, 0.17)
    lightness_gap: tuple = (0.55, 0.22)
    clutter: float = 5.0
    occlusion: float = 0.45
    noise: tuple = (2.0, 14.0)
    placement_exponent: float = 0.5

    def as_dict(self):
        """JSON-ready: pairs as lists, so a manifest read back from disk compares equal."""
        return {name: list(value) if isinstance(value, tuple) else value
                for name, value in dataclasses.asdict(self).items()}


# Small enough that the demo's DVT learns the shapes in minutes of CPU training, hard enough at the
# tail that the coarse exit misses what the fine one sees (README, "What the demo shows").
DEFAULT_PROFILE = DifficultyProfile()


def _lerp(easy_and_hard, difficulty):
    easy, hard = easy_and_hard
    return easy + (hard - easy) * difficulty


def _object_radius_fraction(profile, difficulty, rng):
    """Object radius as a fraction of the image side."""
    return _lerp(profile.radius, difficulty) * rng.uniform(0.9, 1.1)


def _lightness_gap(profile, difficulty, rng):
    """Lightness difference between object and background (HLS lightness, 0..1)."""
    return _lerp(profile.lightness_gap, difficulty) * rng.uniform(0.85, 1.15)


def _distractor_count(profile, difficulty, rng):
    return int(rng.poisson(profile.clutter * difficulty ** 1.5))


def _occlusion_probability(profile, difficulty):
    return profile.occlusion * difficulty ** 2


def _noise_std(profile, difficulty):
    """Gaussian pixel noise, in 0..255 units."""
    return _lerp(profile.noise, difficulty)


# --------------------------------------------------------------------------------------------
# Colours
# --------------------------------------------------------------------------------------------

def _colour(lightness, rng):
    """An RGB tuple of the given HLS lightness with a random hue and saturation.

    HLS lightness is only roughly perceived brightness (yellow looks brighter than blue), which
    adds a little natural variation to the contrast the difficulty asks for.
    """
    hue, saturation = rng.random(), rng.uniform(0.2, 0.9)
    red, green, blue = colorsys.hls_to_rgb(hue, float(np.clip(lightness, 0.0, 1.0)), saturation)
    return int(round(red * 255)), int(round(green * 255)), int(round(blue * 255))


def _object_and_background_lightness(profile, difficulty, rng):
    """Object and background lightnesses a gap apart, in random order, within [0.1, 0.9]."""
    gap = min(_lightness_gap(profile, difficulty, rng), 0.8)
    low = rng.uniform(0.1, 0.9 - gap)
    if rng.random() < 0.5:
        return low + gap, low
    return low, low + gap


# --------------------------------------------------------------------------------------------
# Shapes: each draws white (255) onto an "L" mask around (cx, cy) with radius r and angle theta.
# --------------------------------------------------------------------------------------------

def _rotated(points, cx, cy, theta):
    """Rotate (x, y) offsets by theta and move them to the centre; as a list for ImageDraw."""
    points = np.asarray(points, dtype=np.float64)
    cos, sin = math.cos(theta), math.sin(theta)
    xs = cx + points[:, 0] * cos - points[:, 1] * sin
    ys = cy + points[:, 0] * sin + points[:, 1] * cos
    return list(zip(xs.tolist(), ys.tolist()))


def _regular_polygon(count, radius, phase=0.0):
    angles = phase + 2 * math.pi * np.arange(count) / count
    return np.stack([radius * np.cos(angles), radius * np.sin(angles)], axis=1)


def _disc(draw, cx, cy, r, fill=255):
    draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)


def _draw_circle(draw, cx, cy, r, theta, rng):
    _disc(draw, cx, cy, r * 0.9)


def _draw_ring(draw, cx, cy, r, theta, rng):
    _disc(draw, cx, cy, r * 0.95)
    _disc(draw, cx, cy, r * 0.95 * rng.uniform(0.5, 0.62), fill=0)


def _draw_crescent(draw, cx, cy, r, theta, rng):
    _disc(draw, cx, cy, r * 0.95)
    shift = r * rng.uniform(0.4, 0.55)
    _disc(draw, cx + shift * math.cos(theta), cy + shift * math.sin(theta), r * 0.85, fill=0)


def _draw_square(draw, cx, cy, r, theta, rng):
    draw.polygon(_rotated(_regular_polygon(4, r * 0.95, math.pi / 4), cx, cy, theta), fill=255)


def _draw_triangle(draw, cx, cy, r, theta, rng):
    draw.polygon(_rotated(_regular_polygon(3, r, -math.pi / 2), cx, cy, theta), fill=255)


def _draw_star(draw, cx, cy, r, theta, rng):
    outer = _regular_polygon(5, r, -math.pi / 2)
    inner = _regular_polygon(5, r * 0.42, -math.pi / 2 + math.pi / 5)
    points = np.empty((10, 2))
    points[0::2], points[1::2] = outer, inner
    draw.polygon(_rotated(points, cx, cy, theta), fill=255)


def _draw_cross(draw, cx, cy, r, theta, rng):
    arm, half = r * 0.95, r * 0.3
    plus = [(-half, -arm), (half, -arm), (half, -half), (arm, -half), (arm, half), (half, half),
            (half, arm), (-half, arm), (-half, half), (-arm, half), (-arm, -half), (-half, -half)]
    draw.polygon(_rotated(plus, cx, cy, theta), fill=255)


def _draw_stripes(draw, cx, cy, r, theta, rng):
    # Three parallel bars with gaps as wide as the bars: 5 bar widths span the object.
    width, half_length = 2 * r * 0.9 / 5, r * 0.9
    for offset in (-2 * width, 0.0, 2 * width):
        bar = [(-half_length, offset - width / 2), (half_length, offset - width / 2),
               (half_length, offset + width / 2), (-half_length, offset + width / 2)]
        draw.polygon(_rotated(bar, cx, cy, theta), fill=255)


_SHAPE_DRAWERS = {
    "circle": _draw_circle, "crescent": _draw_crescent, "cross": _draw_cross, "ring": _draw_ring,
    "square": _draw_square, "star": _draw_star, "stripes": _draw_stripes,
    "triangle": _draw_triangle,
}


# --------------------------------------------------------------------------------------------
# Scene layers, all at supersampled resolution
# --------------------------------------------------------------------------------------------

def _render_background(base_rgb, size, canvas_size, difficulty, rng):
    """Flat colour for easy images; uneven lighting and blotchy texture added for hard ones.

    Both are low-frequency, so they are computed at output ``size``. The nearest-neighbour
    upsample to ``canvas_size`` is exactly undone by the final box-filter reduction, so the
    background pixels come out unchanged, at a fraction of the cost of a smooth upsample.
    """
    canvas = np.empty((size, size, 3), dtype=np.float32)
    canvas[:] = base_rgb
    # A linear gradient in a random direction, like uneven lighting.
    angle = rng.uniform(0, 2 * math.pi)
    ramp = np.linspace(-0.5, 0.5, size, dtype=np.float32)
    gradient = math.cos(angle) * ramp[None, :] + math.sin(angle) * ramp[:, None]
    canvas += (70.0 * difficulty * gradient)[..., None]
    # Blotches: a coarse random colour grid, smoothly upsampled.
    coarse = rng.normal(0.0, 1.0, size=(5, 5, 3)).astype(np.float32)
    coarse_image = Image.fromarray(np.clip(coarse * 40 + 128, 0, 255).astype(np.uint8))
    blotches = np.asarray(coarse_image.resize((size, size), Image.BICUBIC), np.float32) - 128
    canvas += 0.8 * difficulty * blotches
    background = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8))
    return background.resize((canvas_size, canvas_size), Image.NEAREST)


def _blob_points(cx, cy, radius, rng):
    """Vertices of an irregular polygon around (cx, cy): a shape belonging to no class."""
    count = int(rng.integers(5, 9))
    angles = np.sort(rng.uniform(0, 2 * math.pi, size=count))
    radii = radius * rng.uniform(0.5, 1.2, size=count)
    xs, ys = cx + radii * np.cos(angles), cy + radii * np.sin(angles)
    return list(zip(xs.tolist(), ys.tolist()))


def _draw_distractor(draw, canvas_size, colour, rng):
    """A small blob or a thin straight stroke at a random place."""
    x0, y0 = rng.uniform(0, canvas_size, size=2)
    if rng.random() < 0.5:
        radius = canvas_size * rng.uniform(0.04, 0.12)
        draw.polygon(_blob_points(x0, y0, radius, rng), fill=colour)
        return
    length = canvas_size * rng.uniform(0.15, 0.5)
    angle = rng.uniform(0, 2 * math.pi)
    end = (x0 + length * math.cos(angle), y0 + length * math.sin(angle))
    # 1-2 output pixels thick: thinner than any stripe, so strokes never pass for one.
    width = int(round(SUPERSAMPLE * rng.uniform(1.0, 2.0)))
    draw.line([(x0, y0), end], fill=colour, width=width)


def _occluder_points(cx, cy, r, rng):
    """A blob straddling the object's edge, hiding part of it (a quarter or so on average)."""
    direction = rng.uniform(0, 2 * math.pi)
    distance = r * rng.uniform(0.6, 1.0)
    return _blob_points(cx + distance * math.cos(direction), cy + distance * math.sin(direction),
                        r * rng.uniform(0.55, 0.8), rng)


def _occluder_lightness(object_lightness, rng):
    """Clearly lighter or darker than the object, so the occluder does not merge into it."""
    lighter, darker = object_lightness + 0.25, object_lightness - 0.25
    choices = [value for value in (lighter, darker) if 0.05 <= value <= 0.95]
    return choices[int(rng.integers(len(choices)))] + rng.uniform(-0.05, 0.05)


def _object_placement(profile, canvas_size, difficulty, rng):
    """Centre, radius and rotation of the object: off-centre freedom grows with difficulty."""
    r = canvas_size * _object_radius_fraction(profile, difficulty, rng)
    freedom = difficulty ** profile.placement_exponent
    max_shift = max(canvas_size / 2 - r * 1.05, 0.0) * _lerp((0.08, 1.0), freedom)
    cx, cy = canvas_size / 2 + rng.uniform(-max_shift, max_shift, size=2)
    theta = rng.uniform(-1, 1) * math.radians(_lerp((15.0, 180.0), freedom))
    return cx, cy, r, theta


# --------------------------------------------------------------------------------------------
# Public rendering API
# --------------------------------------------------------------------------------------------

def generate_sample(class_index, difficulty, rng, size=64, profile=DEFAULT_PROFILE):
    """Render one image; return ``(image, object_mask)``.

    ``profile`` (a ``DifficultyProfile``) says what ``difficulty`` 0 and 1 look like.
    ``image`` is an RGB ``PIL.Image`` of ``size`` x ``size``. ``object_mask`` is a float32
    ``(size, size)`` array in [0, 1]: the fraction of each pixel covered by the visible (not
    occluded) class object, for tests and for analysing what a model looked at.
    """
    if not 0 <= class_index < len(CLASS_NAMES):
        raise ValueError(f"class_index {class_index} out of range 0..{len(CLASS_NAMES) - 1}")
    if not 0.0 <= difficulty <= 1.0:
        raise ValueError(f"difficulty must be in [0, 1], got {difficulty}")
    canvas_size = size * SUPERSAMPLE

    object_lightness, background_lightness = _object_and_background_lightness(profile, difficulty, rng)
    canvas = _render_background(_colour(background_lightness, rng), size, canvas_size,
                                difficulty, rng)
    draw = ImageDraw.Draw(canvas)

    # Distractors sit behind the object and have the object's contrast, so the object cannot be
    # found merely by being the only high-contrast thing in the image.
    for _ in range(_distractor_count(profile, difficulty, rng)):
        colour = _colour(object_lightness + rng.uniform(-0.1, 0.1), rng)
        _draw_distractor(draw, canvas_size, colour, rng)

    cx, cy, r, theta = _object_placement(profile, canvas_size, difficulty, rng)
    object_mask = Image.new("L", (canvas_size, canvas_size), 0)
    _SHAPE_DRAWERS[CLASS_NAMES[class_index]](ImageDraw.Draw(object_mask), cx, cy, r, theta, rng)
    # Pasting only the object's bounding box is several times faster than the whole canvas.
    box = object_mask.getbbox()
    if box is not None:
        canvas.paste(_colour(object_lightness, rng), box, object_mask.crop(box))

    if rng.random() < _occlusion_probability(profile, difficulty):
        occluder = _occluder_points(cx, cy, r, rng)
        draw.polygon(occluder, fill=_colour(_occluder_lightness(object_lightness, rng), rng))
        ImageDraw.Draw(object_mask).polygon(occluder, fill=0)  # leaves only the visible part

    pixels = np.asarray(canvas.reduce(SUPERSAMPLE), dtype=np.float32)
    pixels += rng.normal(0.0, _noise_std(profile, difficulty), size=pixels.shape).astype(np.float32)
    image = Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), "RGB")
    visible = np.asarray(object_mask.reduce(SUPERSAMPLE), dtype=np.float32) / 255.0
    return image, visible


def generate_image(class_index, difficulty, rng, size=64, profile=DEFAULT_PROFILE):
    """Render one RGB ``PIL.Image`` of class ``class_index`` at ``difficulty`` in [0, 1]."""
    return generate_sample(class_index, difficulty, rng, size, profile)[0]


def _image_rng(seed, split, class_index, image_index):
    # Its own stream per image: an image never depends on how many others were generated.
    return np.random.default_rng([seed, SPLITS.index(split), class_index, image_index])


def _draw_difficulty(profile, rng):
    """Beta(a, b) on [0, 1]; the default Beta(1, 2.5) gives mostly easy images with a long tail of
    hard ones (mean 0.29), as DVT expects of natural photos. About 28% of images land above 0.4,
    2% above 0.8; plenty of easy training images let a small ViT learn the shapes in minutes.
    """
    return float(rng.beta(*profile.difficulty_beta))


# --------------------------------------------------------------------------------------------
# Writing the dataset to disk
# --------------------------------------------------------------------------------------------

def _manifest(num_classes, train_per_class, val_per_class, calib_per_class, image_size, seed, profile):
    return {
        "generator": "dvt_ms.demo_data",
        "generator_version": GENERATOR_VERSION,
        "class_names": list(CLASS_NAMES[:num_classes]),
        "num_classes": num_classes,
        "train_per_class": train_per_class,
        "val_per_class": val_per_class,
        "calib_per_class": calib_per_class,
        "image_size": image_size,
        "seed": seed,
        "difficulty_profile": profile.as_dict(),
    }


def read_manifest(root):
    """The manifest dict of the dataset at ``root``, or None if ``root`` has none."""
    path = pathlib.Path(root) / MANIFEST_NAME
    if not path.is_file():
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


# The dataset's parameters: what write_dataset and the command line take, checked in one place.
PARAMETERS = (
    Field("num_classes", "int", len(CLASS_NAMES), f"classes: the first N of the {len(CLASS_NAMES)} shapes",
          minimum=1, maximum=len(CLASS_NAMES)),
    Field("train_per_class", "int", 300, "training images per class", minimum=0),
    Field("val_per_class", "int", 75, "validation images per class", minimum=0),
    Field("calib_per_class", "int", 0, "images per class of a held-out calib/ split for threshold calibration",
          minimum=0),
    Field("image_size", "int", 64, "image side in pixels", minimum=8),
    Field("seed", "int", 0, "seed of every image", minimum=0),
)


def _check_parameters(parameters):
    """``parameters`` with defaults filled in, or one ``ConfigError`` (a ``ValueError``) naming every
    bad one."""
    values, problems = check_fields(PARAMETERS, parameters)
    raise_problems(problems, "demo dataset")
    return values


def _write_split(directory, split, manifest, profile, difficulties):
    """Write every image of one split under ``directory/split``, recording difficulties."""
    count = manifest[f"{split}_per_class"]
    total, done = count * manifest["num_classes"], 0
    for class_index, class_name in enumerate(manifest["class_names"]):
        class_dir = directory / split / class_name
        class_dir.mkdir(parents=True)
        for image_index in range(count):
            rng = _image_rng(manifest["seed"], split, class_index, image_index)
            difficulty = _draw_difficulty(profile, rng)
            image = generate_image(class_index, difficulty, rng, manifest["image_size"], profile)
            name = f"{class_name}_{image_index:05d}.png"
            # Noisy pixels barely compress: a light level is as small and twice as fast.
            image.save(class_dir / name, format="PNG", compress_level=1)
            difficulties[f"{split}/{class_name}/{name}"] = round(difficulty, 6)
        done += count
        logger.info("%s: %d/%d images", split, done, total)


def _write_json(path, payload):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(payload, f, indent=1, sort_keys=True)
        f.write("\n")


def _reuse_existing(root, manifest):
    """Return the manifest if ``root`` already holds this dataset, None if ``root`` is free."""
    if not root.exists():
        return None
    if root.is_dir() and not any(root.iterdir()):
        root.rmdir()  # an empty directory holds nothing to protect: generate in its place
        return None
    existing = read_manifest(root)
    if existing is None:
        raise DatasetMismatchError(
            f"{root} exists but is not a demo dataset (no {MANIFEST_NAME}); "
            "choose another root or remove it")
    if existing != manifest:
        differences = {key: (existing.get(key), value) for key, value in manifest.items()
                       if existing.get(key) != value}
        raise DatasetMismatchError(
            f"demo dataset at {root} was generated with different parameters "
            f"(existing, requested): {differences}; choose another root or remove it")
    return existing


def write_dataset(root, profile=DEFAULT_PROFILE, **parameters):
    """Write the dataset to ``root`` (or reuse it if already there) and return its manifest.

    ``parameters`` are those of ``PARAMETERS`` (num_classes, train_per_class, val_per_class,
    calib_per_class, image_size, seed); the others take their defaults. Layout:
    ``root/{train,val[,calib]}/<class_name>/<class_name>_NNNNN.png``, ``root/difficulty.json``
    (relative path -> difficulty) and ``root/dataset.json`` (the manifest). The dataset is built
    in a hidden temporary sibling directory and renamed into place, so ``root`` is either absent
    or complete. Raises ``DatasetMismatchError`` if ``root`` holds anything else.
    """
    values = _check_parameters(parameters)
    root = pathlib.Path(root)
    manifest = _manifest(values["num_classes"], values["train_per_class"], values["val_per_class"],
                         values["calib_per_class"], values["image_size"], values["seed"], profile)
    existing = _reuse_existing(root, manifest)
    if existing is not None:
        logger.info("reusing demo dataset at %s", root)
        return existing

    root.parent.mkdir(parents=True, exist_ok=True)
    staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{root.name}.partial-", dir=root.parent))
    try:
        logger.info("generating demo dataset in %s", root)
        difficulties = {}
        for split in (s for s in SPLITS if manifest[f"{s}_per_class"] > 0):
            _write_split(staging, split, manifest, profile, difficulties)
        _write_json(staging / DIFFICULTY_NAME, difficulties)
        _write_json(staging / MANIFEST_NAME, manifest)
        apply_umask_modes(staging)   # mkdtemp made it private (0700)
        try:
            os.rename(staging, root)
        except OSError:
            # Another process finished the same dataset first: accept it if it matches.
            if _reuse_existing(root, manifest) is None:
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("wrote %d images to %s", len(difficulties), root)
    return manifest


def main(argv=None):
    parser = cli.argument_parser("dvt_ms.demo.dataset", __doc__, paragraphs=1)
    parser.add_argument("root", help="dataset directory to create (or reuse)")
    for field in PARAMETERS:
        parser.add_argument(f"--{field.name}", type=int, default=field.default, help=field.doc)
    args = parser.parse_args(argv)
    cli.setup_logging()

    def write():
        write_dataset(args.root, **{field.name: getattr(args, field.name) for field in PARAMETERS})

    return cli.run(write)


if __name__ == "__main__":
    sys.exit(main())
