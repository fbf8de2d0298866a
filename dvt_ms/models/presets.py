"""The DVT model family's facts: one config class, the published presets, each exit's geometry.

Every fact about a preset lives in ``PRESETS``; the registry (``cascade.py``), the converter, the
FLOPs counter and the tests read it from here. ``DVTConfig.exits`` computes each exit's geometry
(token grid, the previous exit's grid, the tokenizer's splits, which reuse paths it has) once;
every module takes it from there. See docs/model.md.
"""
import dataclasses
from typing import Optional, Tuple

from ..errors import ConfigError

__all__ = [
    "DVTConfig", "ExitGeometry", "PRESETS", "PRESET_STATE_DICT_ELEMENTS", "T2T_SOFT_SPLITS",
    "T2T_LATER_SPLIT", "OVERRIDABLE_KEYS", "FIELD_TYPES", "FEATURE_REUSE_HIDDEN", "FEATURE_REUSE_DIM",
    "build_config", "patch_geometry", "conv_output_size",
]

# First soft split (kernel, stride, padding) of each T2T exit; the two later splits are (3, 2, 1).
# On a 224 input they give 7x7, 10x10 and 14x14 tokens.
T2T_SOFT_SPLITS = ((14, 8, 3), (11, 6, 5), (7, 4, 2))
T2T_LATER_SPLIT = (3, 2, 1)

# Width and hidden size of the per-block feature-reuse MLP (fixed by the published models).
FEATURE_REUSE_HIDDEN = 128
FEATURE_REUSE_DIM = 48


def conv_output_size(size, kernel, stride, padding):
    return (size + 2 * padding - kernel) // stride + 1


def _patch_split(img_size, grid):
    kernel = -(-img_size // grid)
    padding = -(-(kernel * grid - img_size) // 2)
    return kernel, padding


def _patch_grid_fits(img_size, grid):
    """A grid fits when every patch covers image pixels: padding < kernel (a grid larger than the
    image would tile an upscaled image with 1-pixel patches, the border ones padding only)."""
    kernel, padding = _patch_split(img_size, grid)
    return padding < kernel and conv_output_size(img_size, kernel, kernel, padding) == grid


def patch_geometry(img_size, grid):
    """(kernel, stride, padding) of a patch convolution giving ``grid`` tokens per side.

    kernel = stride = ceil(img_size / grid), padding splits the overshoot: 224 -> 7, 10, 14 gives
    the published 32/0, 23/3 and 16/0. Grids whose border patches would be padding only (padding
    >= kernel, e.g. any grid larger than the image) are a ``ConfigError`` naming patch_grids."""
    if grid <= 0:
        raise ConfigError(f"patch_grids: token grid sides must be positive, got {grid}")
    kernel, padding = _patch_split(img_size, grid)
    if not _patch_grid_fits(img_size, grid):
        fitting = max(g for g in range(1, min(grid, img_size) + 1) if _patch_grid_fits(img_size, g))
        raise ConfigError(
            f"patch_grids: a {grid}x{grid} token grid does not fit {img_size} px images ({kernel} px patches with "
            f"{padding} px of padding per side: border patches would hold no image pixels); the nearest grid "
            f"below that fits is {fitting}")
    return kernel, kernel, padding


def _smallest_t2t_img_size():
    for img_size in range(1, 1024):
        grids = [_split_grids(img_size, DVTConfig._t2t_splits(k))[-1] for k in range(len(T2T_SOFT_SPLITS))]
        if grids[0] > 0 and grids == sorted(set(grids)):
            return img_size
    return None


@dataclasses.dataclass(frozen=True)
class ExitGeometry:
    """Where exit ``index`` (0-based) sits in the cascade: what its modules are built from."""

    index: int
    grid: int                                  # token grid side: grid² patch tokens + the class token
    prev_grid: Optional[int]                   # the previous exit's grid (None for exit 1)
    feature_reuse: bool                        # its blocks take the previous exit's feature
    relation_reuse: bool                       # its attention adds the previous exit's relations
    splits: Tuple[Tuple[int, int, int], ...]   # tokenizer steps as (kernel, stride, padding)
    split_grids: Tuple[int, ...]               # grid side after each step; the last is ``grid``

    @property
    def num_tokens(self):
        return 1 + self.grid * self.grid

    @property
    def prev_num_tokens(self):
        return None if self.prev_grid is None else 1 + self.prev_grid * self.prev_grid


def _split_grids(img_size, splits):
    grids, size = [], img_size
    for split in splits:
        size = conv_output_size(size, *split)
        grids.append(size)
    return tuple(grids)


@dataclasses.dataclass(frozen=True)
class DVTConfig:
    """Everything that defines a DVT cascade's architecture."""

    family: str                      # "t2t" (Tokens-to-Token + Performer) or "deit" (patch conv)
    embed_dim: int
    depth: int
    num_heads: int
    mlp_ratio: float
    qkv_bias: bool
    layernorm_eps: float
    num_classes: int = 1000
    img_size: int = 224
    patch_grids: Tuple[int, ...] = (7, 10, 14)   # deit only; t2t grids follow from img_size
    token_dim: int = 64                          # t2t only: width of the T2T Performers
    feature_reuse: bool = True
    relation_reuse: bool = True
    drop_rate: float = 0.0                       # dropout after position embedding, attention projection, MLPs
    drop_path_rate: float = 0.0                  # stochastic depth, linear over each exit's blocks

    def __post_init__(self):
        if self.family not in ("t2t", "deit"):
            raise ConfigError(f"family must be 't2t' or 'deit', got {self.family!r}")
        for key in ("embed_dim", "depth", "num_heads", "num_classes", "img_size", "token_dim"):
            if int(getattr(self, key)) <= 0:
                raise ConfigError(f"{key} must be a positive integer, got {getattr(self, key)!r}")
        if self.embed_dim % self.num_heads:
            raise ConfigError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.family == "t2t" and self.token_dim % 2:
            raise ConfigError(f"token_dim must be even (Performer uses token_dim/2 features), got {self.token_dim}")
        for key in ("drop_rate", "drop_path_rate"):
            if not 0.0 <= getattr(self, key) < 1.0:
                raise ConfigError(f"{key} must be in [0, 1), got {getattr(self, key)!r}")
        if self.family == "deit" and any(int(g) <= 0 for g in self.patch_grids):
            raise ConfigError(f"patch_grids must be positive token grid sides, got {list(self.patch_grids)}")
        if self.family == "t2t":
            grids = [_split_grids(self.img_size, self._t2t_splits(k)) for k in range(len(T2T_SOFT_SPLITS))]
            if any(g <= 0 for steps in grids for g in steps) or \
                    [steps[-1] for steps in grids] != sorted({steps[-1] for steps in grids}):
                raise ConfigError(f"img_size {self.img_size} is too small for the t2t tokenizers (their token grids "
                                  f"must strictly increase from exit to exit); use img_size >= "
                                  f"{_smallest_t2t_img_size()}")
        grids = self.grids
        if list(grids) != sorted(set(grids)):
            raise ConfigError(f"token grids must strictly increase from exit to exit, got {list(grids)}")
        object.__setattr__(self, "_exits", tuple(self._exit_geometry(k) for k in range(len(grids))))

    @staticmethod
    def _t2t_splits(exit_index):
        return (T2T_SOFT_SPLITS[exit_index], T2T_LATER_SPLIT, T2T_LATER_SPLIT)

    def _exit_geometry(self, exit_index):
        if self.family == "deit":
            splits = (patch_geometry(self.img_size, self.patch_grids[exit_index]),)
        else:
            splits = self._t2t_splits(exit_index)
        split_grids = _split_grids(self.img_size, splits)
        has_previous = exit_index > 0
        return ExitGeometry(
            index=exit_index, grid=split_grids[-1],
            prev_grid=self.grids[exit_index - 1] if has_previous else None,
            feature_reuse=has_previous and self.feature_reuse,
            relation_reuse=has_previous and self.relation_reuse,
            splits=splits, split_grids=split_grids)

    @property
    def exits(self):
        """``ExitGeometry`` of every exit, exit 1 first."""
        return self._exits

    @property
    def num_exits(self):
        return len(self.grids)

    @property
    def head_dim(self):
        return self.embed_dim // self.num_heads

    @property
    def grids(self):
        """Token grid side of each exit, exit 1 first."""
        if self.family == "deit":
            return tuple(int(g) for g in self.patch_grids)
        return tuple(_split_grids(self.img_size, self._t2t_splits(k))[-1] for k in range(len(T2T_SOFT_SPLITS)))


# name -> architecture (docs/model.md, "Presets") and its published state-dict element count.
PRESETS = {
    "dvt_t2t_vit_12": dict(family="t2t", embed_dim=256, depth=12, num_heads=4, mlp_ratio=2.0,
                           qkv_bias=False, layernorm_eps=1e-5, token_dim=64),
    "dvt_t2t_vit_14": dict(family="t2t", embed_dim=384, depth=14, num_heads=6, mlp_ratio=3.0,
                           qkv_bias=False, layernorm_eps=1e-5, token_dim=64),
    "dvt_deit_small": dict(family="deit", embed_dim=384, depth=12, num_heads=6, mlp_ratio=4.0,
                           qkv_bias=True, layernorm_eps=1e-6),
}
PRESET_STATE_DICT_ELEMENTS = {
    "dvt_t2t_vit_12": 22_461_516,
    "dvt_t2t_vit_14": 67_881_836,
    "dvt_deit_small": 70_442_232,
}

OVERRIDABLE_KEYS = tuple(f.name for f in dataclasses.fields(DVTConfig) if f.name != "family")
# The Python type of every overridable field: bool, int, float, or tuple (of ints).
FIELD_TYPES = {f.name: (tuple if f.type == Tuple[int, ...] else f.type)
               for f in dataclasses.fields(DVTConfig) if f.name != "family"}


def _checked_value(key, value):
    """``value`` for DVTConfig field ``key``, or a ConfigError naming both."""
    kind = FIELD_TYPES[key]
    if kind is bool:
        valid = isinstance(value, bool)
    elif kind is int:
        valid = isinstance(value, int) and not isinstance(value, bool)
    elif kind is float:
        valid = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if valid else value
    else:  # a tuple of ints
        valid = isinstance(value, (list, tuple)) and len(value) > 0 and all(
            isinstance(v, int) and not isinstance(v, bool) for v in value)
        value = tuple(value) if valid else value
    if not valid:
        expected = {bool: "true or false", int: "an integer", float: "a number"}.get(kind, "a list of integers")
        raise ConfigError(f"{key} must be {expected}, got {value!r}")
    return value


def build_config(name, **overrides):
    """The config of preset ``name`` with ``overrides`` applied.

    Unknown keys, values of the wrong type and impossible architectures are ``ConfigError``s (a
    ``ValueError``) naming the key and value."""
    if name not in PRESETS:
        raise ConfigError(f"unknown model {name!r}; available: {', '.join(sorted(PRESETS))}")
    unknown = sorted(set(overrides) - set(OVERRIDABLE_KEYS))
    if unknown:
        raise ConfigError(f"unknown override(s) {', '.join(unknown)} for {name}; "
                          f"valid keys: {', '.join(OVERRIDABLE_KEYS)}")
    fields = dict(PRESETS[name])
    fields.update({key: _checked_value(key, value) for key, value in overrides.items()})
    return DVTConfig(**fields)
