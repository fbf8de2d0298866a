"""The DVT model family: one config class, the published presets, and the registry.

Each preset is a tiny function over ``DVTConfig`` (timm style). Every fact about a preset lives in
``PRESETS``; tests, the converter and the FLOPs counter read it from here.
"""
import dataclasses
from typing import Tuple

__all__ = [
    "DVTConfig", "PRESETS", "PRESET_STATE_DICT_ELEMENTS", "T2T_SOFT_SPLITS", "OVERRIDABLE_KEYS",
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


def patch_geometry(img_size, grid):
    """(kernel, stride, padding) of a patch convolution giving ``grid`` tokens per side.

    kernel = stride = ceil(img_size / grid), padding splits the overshoot: 224 -> 7, 10, 14 gives
    the published 32/0, 23/3 and 16/0.
    """
    kernel = -(-img_size // grid)
    padding = -(-(kernel * grid - img_size) // 2)
    if conv_output_size(img_size, kernel, kernel, padding) != grid:
        raise ValueError(f"cannot tokenise a {img_size}px image into a {grid}x{grid} patch grid")
    return kernel, kernel, padding


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
    drop_rate: float = 0.0
    drop_path_rate: float = 0.0

    def __post_init__(self):
        if self.family not in ("t2t", "deit"):
            raise ValueError(f"family must be 't2t' or 'deit', got {self.family!r}")
        for key in ("embed_dim", "depth", "num_heads", "num_classes", "img_size", "token_dim"):
            if int(getattr(self, key)) <= 0:
                raise ValueError(f"{key} must be a positive integer, got {getattr(self, key)!r}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.family == "t2t" and self.token_dim % 2:
            raise ValueError(f"token_dim must be even (Performer uses token_dim/2 features), got {self.token_dim}")
        for key in ("drop_rate", "drop_path_rate"):
            if not 0.0 <= getattr(self, key) < 1.0:
                raise ValueError(f"{key} must be in [0, 1), got {getattr(self, key)!r}")
        grids = self.grids
        if any(g <= 0 for g in grids):
            raise ValueError(f"img_size {self.img_size} is too small for the {self.family} tokenizers")
        if list(grids) != sorted(set(grids)):
            raise ValueError(f"token grids must strictly increase from exit to exit, got {grids}")
        if self.family == "deit":
            for grid in grids:
                patch_geometry(self.img_size, grid)

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
            return tuple(self.patch_grids)
        grids = []
        for split in T2T_SOFT_SPLITS:
            size = conv_output_size(self.img_size, *split)
            size = conv_output_size(size, *T2T_LATER_SPLIT)
            grids.append(conv_output_size(size, *T2T_LATER_SPLIT))
        return tuple(grids)

    def stage_reuses(self, exit_index):
        """(feature_reuse, relation_reuse) of a stage: exit 1 has nothing to reuse."""
        if exit_index == 0:
            return False, False
        return self.feature_reuse, self.relation_reuse


# name -> architecture (the spec's preset table) and its published state-dict element count.
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


def build_config(name, **overrides):
    """The config of preset ``name`` with ``overrides`` applied (unknown keys are errors)."""
    if name not in PRESETS:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(sorted(PRESETS))}")
    unknown = sorted(set(overrides) - set(OVERRIDABLE_KEYS))
    if unknown:
        raise ValueError(f"unknown override(s) {', '.join(unknown)} for {name}; "
                         f"valid keys: {', '.join(OVERRIDABLE_KEYS)}")
    fields = dict(PRESETS[name])
    fields.update(overrides)
    if "patch_grids" in fields:
        fields["patch_grids"] = tuple(int(g) for g in fields["patch_grids"])
    return DVTConfig(**fields)
