"""The two reuse paths by which stage k builds on stage k-1 (docs/model.md, "Reuse")."""
from mindspore import nn, ops

from .layers import Mlp, layer_norm
from .presets import FEATURE_REUSE_DIM, FEATURE_REUSE_HIDDEN
from .resample import GridResample

__all__ = ["FeatureReuse", "RelationReuse"]


class FeatureReuse(nn.Cell):
    """Per block: compress the previous stage's last feature (D -> 128 -> 48), resample its tokens to
    this stage's grid, and give the class token zeros. Output (B, 1+n, 48) is concatenated to the
    block's MLP input."""

    def __init__(self, dim, src_grid, dst_grid, eps, drop=0.0):
        super().__init__()
        self.out_dim = FEATURE_REUSE_DIM
        self.norm = layer_norm(dim, eps)
        self.mlp = Mlp(dim, FEATURE_REUSE_HIDDEN, FEATURE_REUSE_DIM, drop)
        self.resample = GridResample(src_grid, dst_grid)

    def construct(self, prev_feature):
        compressed = self.mlp(self.norm(prev_feature))
        patch_tokens = self.resample.tokens_then_channels(compressed[:, 1:])
        return ops.concat((ops.zeros_like(compressed[:, :1]), patch_tokens), axis=1)


class RelationReuse(nn.Cell):
    """Map the previous stage's relations (B, H·L, 1+n_prev, 1+n_prev) to this stage's
    (B, H·L, 1+n, 1+n): 1x1 convs across the H·L maps, then resample both token axes with the
    class-token row and column kept as they are."""

    def __init__(self, channels, src_grid, dst_grid):
        super().__init__()
        self.expand = nn.Conv2d(channels, channels * 3, 1, has_bias=True, weight_init="he_uniform")
        self.act = nn.GELU(approximate=False)
        self.reduce = nn.Conv2d(channels * 3, channels, 1, has_bias=True, weight_init="he_uniform")
        self.resample = GridResample(src_grid, dst_grid)

    def construct(self, prev_relations):
        mixed = self.reduce(self.act(self.expand(prev_relations)))
        # key axis (last): keep the class-token key, resample the patch keys
        keys = ops.concat((mixed[..., :1], self.resample.tokens_last(mixed[..., 1:])), axis=-1)
        # query axis: keep the class-token query row, resample the patch rows
        queries = self.resample.tokens_then_channels(keys[:, :, 1:])
        return ops.concat((keys[:, :, :1], queries), axis=2)
