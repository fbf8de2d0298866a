"""The DVT model family's facts: one config class, the preset registry, each exit's geometry.

A preset is a tiny function over ``DVTConfig`` registered by name (``register_preset``, as timm
registers its models): the three published architectures and the demo's and CPU-sized ones.
mindcv's registry (``cascade.py``), the converter, the FLOPs counter, the run config and the
tests read presets from here (``PRESETS``, ``list_presets``). ``DVTConfig.exits`` computes each
exit's geometry (token grid, the previous exit's grid, the tokenizer's splits, which reuse paths it
has) once; every module takes it from there. See docs/model.md.
"""
import dataclasses
import types
from typing import Optional, Tuple

from ..errors import ConfigError
from ..schema import Field, check_fields, raise_problems, suggest_key

__all__ = [
    "DVTConfig", "ExitGeometry", "MODEL_FIELDS", "PRESETS", "T2T_SOFT_SPLITS", "T2T_LATER_SPLIT",
    "OVERRIDABLE_KEYS", "FEATURE_REUSE_HIDDEN", "FEATURE_REUSE_DIM", "register_preset", "list_presets",
    "build_config", "patch_geometry", "conv_output_size",
    "dvt_t2t_vit_12", "dvt_t2t_vit_14", "dvt_deit_small", "dvt_demo", "dvt_tiny",
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


# The fields of ``DVTConfig`` as schema fields: type, allowed values and doc line, written once.
# The run config's model keys are these (``dvt_ms.config``); ``DVTConfig`` checks itself with them.
MODEL_FIELDS = (
    Field("family", "str", doc="t2t (Tokens-to-Token + Performer) or deit (patch convolution)",
          choices=("t2t", "deit")),
    Field("embed_dim", "int", doc="token width D", minimum=1),
    Field("depth", "int", doc="transformer blocks per exit", minimum=1),
    Field("num_heads", "int", doc="attention heads", minimum=1),
    Field("mlp_ratio", "float", doc="MLP hidden width / D", minimum=0.0),
    Field("qkv_bias", "bool", doc="bias in the qkv projection"),
    Field("layernorm_eps", "float", doc="LayerNorm epsilon", minimum=0.0),
    Field("num_classes", "int", 1000, doc="classes; must match the dataset (heads are re-initialised when it "
          "differs from `pretrained`)", minimum=1),
    Field("img_size", "int", 224, doc="input resolution (train crop and eval crop)", minimum=1),
    Field("patch_grids", "ints", (7, 10, 14), doc="deit only: token grid side of each exit, e.g. [7, 10, 14]"),
    Field("token_dim", "int", 64, doc="t2t only: width of the Tokens-to-Token Performers", minimum=1),
    Field("feature_reuse", "bool", True, doc="exits > 1 reuse the previous exit's features"),
    Field("relation_reuse", "bool", True, doc="exits > 1 reuse the previous exit's attention logits"),
    Field("drop_rate", "float", 0.0, doc="dropout on the position-embedded tokens, the attention projections "
          "and the MLPs (0 in the published recipe)", minimum=0.0, below=1.0),
    Field("drop_path_rate", "float", 0.0, doc="stochastic depth, linear over depth (published recipe: 0.1)",
          minimum=0.0, below=1.0),
)


@dataclasses.dataclass(frozen=True)
class DVTConfig:
    """Everything that defines a DVT cascade's architecture (fields: ``MODEL_FIELDS``).

    Construction checks every field and the architecture as a whole and raises one
    ``ConfigError`` listing every problem (its ``problems`` attribute holds them one by one)."""

    family: str
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
        given = {field.name: getattr(self, field.name) for field in MODEL_FIELDS}
        values, problems = check_fields(MODEL_FIELDS, given)
        if not problems:
            problems = self._architecture_problems(values)
        raise_problems(problems, "impossible architecture")
        for key, value in values.items():   # checked values: lists as tuples, integers as floats where numbers
            object.__setattr__(self, key, value)
        object.__setattr__(self, "_exits", tuple(self._exit_geometry(k) for k in range(len(self.grids))))

    @classmethod
    def _architecture_problems(cls, values):
        """What makes checked field ``values`` an impossible cascade, one message per problem."""
        problems = []
        if values["embed_dim"] % values["num_heads"]:
            problems.append(f"embed_dim {values['embed_dim']} is not divisible by num_heads {values['num_heads']}")
        if values["family"] == "t2t":
            if values["token_dim"] % 2:
                problems.append(f"token_dim must be even (Performer uses token_dim/2 features), "
                                f"got {values['token_dim']}")
            grids = [_split_grids(values["img_size"], cls._t2t_splits(k)) for k in range(len(T2T_SOFT_SPLITS))]
            if any(g <= 0 for steps in grids for g in steps) or \
                    [steps[-1] for steps in grids] != sorted({steps[-1] for steps in grids}):
                problems.append(f"img_size {values['img_size']} is too small for the t2t tokenizers (their token "
                                f"grids must strictly increase from exit to exit); use img_size >= "
                                f"{_smallest_t2t_img_size()}")
            return problems
        grids = values["patch_grids"]
        if any(g <= 0 for g in grids):
            problems.append(f"patch_grids must be positive token grid sides, got {list(grids)}")
        elif list(grids) != sorted(set(grids)):
            problems.append(f"token grids must strictly increase from exit to exit, got {list(grids)}")
        else:
            for grid in grids:
                try:
                    patch_geometry(values["img_size"], grid)
                except ConfigError as error:
                    problems.append(str(error))
        return problems

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


# The registry: preset name -> a function of architecture overrides returning its DVTConfig, as
# timm registers model functions. ``published`` presets have checkpoints from the authors.
_PRESETS = {}
_PUBLISHED = set()


def register_preset(published=False):
    """Register the decorated ``name(**overrides) -> DVTConfig`` function under its name."""
    def register(function):
        _PRESETS[function.__name__] = function
        if published:
            _PUBLISHED.add(function.__name__)
        return function
    return register


@register_preset(published=True)
def dvt_t2t_vit_12(**overrides):
    return DVTConfig(**dict(dict(family="t2t", embed_dim=256, depth=12, num_heads=4, mlp_ratio=2.0,
                                 qkv_bias=False, layernorm_eps=1e-5, token_dim=64), **overrides))


@register_preset(published=True)
def dvt_t2t_vit_14(**overrides):
    return DVTConfig(**dict(dict(family="t2t", embed_dim=384, depth=14, num_heads=6, mlp_ratio=3.0,
                                 qkv_bias=False, layernorm_eps=1e-5, token_dim=64), **overrides))


@register_preset(published=True)
def dvt_deit_small(**overrides):
    return DVTConfig(**dict(dict(family="deit", embed_dim=384, depth=12, num_heads=6, mlp_ratio=4.0,
                                 qkv_bias=True, layernorm_eps=1e-6), **overrides))


@register_preset()
def dvt_demo(**overrides):
    """The demo's cascade (scripts/run_demo.sh): 64 px images, 1x1, 4x4 and 8x8 tokens, 8 classes."""
    return DVTConfig(**dict(dict(family="deit", embed_dim=64, depth=3, num_heads=4, mlp_ratio=2.0,
                                 qkv_bias=True, layernorm_eps=1e-6, num_classes=8, img_size=64,
                                 patch_grids=(1, 4, 8)), **overrides))


@register_preset()
def dvt_tiny(**overrides):
    """A cascade that trains in minutes on a CPU (configs/tiny_cpu.yaml): 64 px, 4x4, 6x6 and 8x8 tokens."""
    return DVTConfig(**dict(dict(family="deit", embed_dim=64, depth=2, num_heads=2, mlp_ratio=2.0,
                                 qkv_bias=True, layernorm_eps=1e-6, num_classes=8, img_size=64,
                                 patch_grids=(4, 6, 8)), **overrides))


PRESETS = types.MappingProxyType(_PRESETS)   # read-only view: name -> preset function

# A preset fixes its family; every other field can be overridden.
_OVERRIDABLE_FIELDS = tuple(field for field in MODEL_FIELDS if field.name != "family")
OVERRIDABLE_KEYS = tuple(field.name for field in _OVERRIDABLE_FIELDS)


def list_presets(published=None):
    """Registered preset names, sorted; ``published=True`` only those with the authors' checkpoints,
    ``False`` only the others."""
    return sorted(name for name in _PRESETS if published is None or (name in _PUBLISHED) == published)


def build_config(name, **overrides):
    """The config of preset ``name`` with architecture ``overrides`` (any ``DVTConfig`` field but
    ``family``) applied.

    An unknown preset or key, values of the wrong type and impossible architectures are one
    ``ConfigError`` (a ``ValueError``) listing every problem, naming each key and value."""
    if name not in _PRESETS:
        close = suggest_key(name, _PRESETS)
        hint = f"did you mean {close!r}? " if close else ""
        raise ConfigError(f"unknown model {name!r}; {hint}available: {', '.join(list_presets())}")
    _, problems = check_fields(_OVERRIDABLE_FIELDS, overrides,
                               unknown_hint=f"overrides are {', '.join(OVERRIDABLE_KEYS)}")
    raise_problems(problems, f"{name} overrides")
    return _PRESETS[name](**overrides)
