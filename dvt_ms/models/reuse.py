"""The two reuse paths by which stage k builds on stage k-1 (docs/model.md, "Reuse")."""
import numpy as np
from mindspore import Tensor, nn, ops

from .layers import GELU, Mlp, layer_norm
from .presets import FEATURE_REUSE_DIM, FEATURE_REUSE_HIDDEN
from .resample import grid_resample_matrix, with_class_token

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
        # diag(0, M ⊗ M): resampled patch tokens and a zero class token in one product, instead of
        # slicing, resampling, zeros and a concatenation (4 kernels fewer per block)
        self.token_map = Tensor(with_class_token(grid_resample_matrix(src_grid, dst_grid), class_token=0.0))

    def construct(self, prev_feature):
        compressed = self.mlp(self.norm(prev_feature))
        return ops.matmul(ops.cast(self.token_map, compressed.dtype), compressed)


class RelationReuse(nn.Cell):
    """Map the previous stage's relations (B, H·L, 1+n_prev, 1+n_prev) to this stage's
    (B, H·L, 1+n, 1+n): 1x1 convs across the H·L maps, then resample both token axes with the
    class-token row and column kept as they are."""

    def __init__(self, channels, src_grid, dst_grid):
        super().__init__()
        self.expand = nn.Conv2d(channels, channels * 3, 1, has_bias=True, weight_init="he_uniform")
        self.act = GELU()
        self.reduce = nn.Conv2d(channels * 3, channels, 1, has_bias=True, weight_init="he_uniform")
        # Both token axes at once: R -> P R Pᵀ with P = diag(1, M ⊗ M) (class token kept as it is).
        token_map = with_class_token(grid_resample_matrix(src_grid, dst_grid))
        self.token_map = Tensor(token_map)
        self.token_map_t = Tensor(np.ascontiguousarray(token_map.T))
        self.matmul = ops.MatMul()

    def construct(self, prev_relations):
        mixed = self._conv1x1(self.reduce, self.act(self._conv1x1(self.expand, prev_relations)))
        _, channels, tokens, _ = mixed.shape
        out_tokens = self.token_map.shape[0]
        token_map = ops.cast(self.token_map, mixed.dtype)
        keys = self.matmul(mixed.reshape(-1, tokens), ops.cast(self.token_map_t, mixed.dtype))   # R Pᵀ
        both = ops.matmul(token_map, keys.reshape(-1, tokens, out_tokens))                      # P (R Pᵀ)
        return both.reshape(-1, channels, out_tokens, out_tokens)

    @staticmethod
    def _conv1x1(conv, x):
        """``conv`` (1x1, with bias) as W·X per image over the flattened token pairs: the CPU's
        matrix product instead of its convolution (docs/performance.md); the Conv2d holds the weight."""
        _, channels, rows, cols = x.shape
        out_channels = conv.weight.shape[0]
        weight = ops.cast(conv.weight.reshape(out_channels, channels), x.dtype)
        mixed = ops.matmul(weight, x.reshape(-1, channels, rows * cols))
        mixed = mixed + ops.cast(conv.bias, x.dtype).reshape(out_channels, 1)
        return mixed.reshape(-1, out_channels, rows, cols)
