"""Per-exit tokenizers: Tokens-to-Token with Performer attention (T2T-ViT) or a patch convolution
(DeiT). Each maps (B, 3, H, W) images to (B, grid², D) tokens in row-major grid order."""
import math

import numpy as np
import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops
from mindspore.common.initializer import Orthogonal, TruncatedNormal, initializer

from .layers import Mlp, dense, layer_norm

__all__ = ["sinusoid_table", "TokenPerformer", "soft_split", "im2col_is_fastest", "use_portable_soft_split",
           "T2TTokenizer", "PatchTokenizer", "build_tokenizer"]

# The T2T modules keep PyTorch's LayerNorm default, whatever the backbone uses.
T2T_LAYERNORM_EPS = 1e-5
# The published Performer's own dropout (after its attention projection and its MLP), independent of
# the backbone's drop_rate.
PERFORMER_DROPOUT = 0.1


def sinusoid_table(num_positions, dim):
    """Fixed position table (num_positions, dim): sin on even, cos on odd channels."""
    positions = np.arange(num_positions, dtype=np.float64)[:, None]
    exponents = 2 * (np.arange(dim) // 2) / dim
    angles = positions / np.power(10000.0, exponents)[None, :]
    angles[:, 0::2] = np.sin(angles[:, 0::2])
    angles[:, 1::2] = np.cos(angles[:, 1::2])
    return angles.astype(np.float32)


def _positive_features(x, weights, halves, feature_norm):
    """phi(x) = exp(x·wᵀ - |x|²/2) · feature_norm for tokens x (B, N, dim) and w (m, dim);
    ``halves`` is a (dim, 1) column of 0.5, so |x|²/2 is one matrix product (a row sum is several
    times slower than a matmul on CPU, and the sum is the same up to rounding order).

    A plain function, not a Cell method: under mixed precision MindSpore casts a method's arguments
    to the cell's compute dtype, which would undo the caller's float32 cast."""
    projected = ops.matmul(x, weights.T)
    half_sq_norm = ops.matmul(x * x, ops.cast(halves, ms.float32))   # amp may have cast the constant
    return ops.exp(projected - half_sq_norm) * feature_norm


class TokenPerformer(nn.Cell):
    """Single-head Performer attention with positive random features, then an MLP (T2T-ViT).

    phi(t) = exp(t·wᵀ - |t|²/2) / sqrt(m) makes softmax attention linear in the token count.
    The random-feature attention runs in float32 whatever the compute dtype (docs/model.md,
    "Precision"): in float16 exp overflows, the normaliser underflows to 0 and 1e-8 rounds to 0.
    """

    def __init__(self, in_dim, dim, kernel_ratio=0.5):
        super().__init__()
        self.dim = dim
        self.num_features = int(dim * kernel_ratio)
        self.norm1 = layer_norm(in_dim, T2T_LAYERNORM_EPS)
        self.kqv = dense(in_dim, 3 * dim)
        self.proj = dense(dim, dim)
        self.proj_drop = nn.Dropout(p=PERFORMER_DROPOUT)
        self.norm2 = layer_norm(dim, T2T_LAYERNORM_EPS)
        self.mlp = Mlp(dim, dim, dim)
        self.mlp_drop = nn.Dropout(p=PERFORMER_DROPOUT)
        # Fixed, never trained: drawn like every other weight, so a function of mindspore.set_seed
        # (identical on every data-parallel rank); a checkpoint's `.w` overrides it.
        self.random_features = Parameter(
            initializer(Orthogonal(gain=math.sqrt(self.num_features)), [self.num_features, dim], ms.float32),
            requires_grad=False)
        self.feature_norm = 1.0 / math.sqrt(self.num_features)
        self.halves = Tensor(np.full((dim, 1), 0.5, np.float32))

    def construct(self, x):
        key, query, value = ops.split(self.kqv(self.norm1(x)), self.dim, axis=-1)
        weights = ops.cast(self.random_features, ms.float32)
        key_features = _positive_features(ops.cast(key, ms.float32), weights, self.halves, self.feature_norm)
        query_features = _positive_features(ops.cast(query, ms.float32), weights, self.halves, self.feature_norm)
        # sum over tokens of phi(k) as ones(1, N) @ phi(k): (B, 1, m), a matmul instead of a row sum
        key_sum = ops.matmul(ops.ones((1, key_features.shape[1]), ms.float32), key_features)
        normaliser = ops.matmul(query_features, key_sum.transpose(0, 2, 1))
        key_value = ops.matmul(ops.cast(value, ms.float32).transpose(0, 2, 1), key_features)   # (B, dim, m)
        attended = ops.matmul(query_features, key_value.transpose(0, 2, 1)) / (normaliser + 1e-8)
        y = value + self.proj_drop(self.proj(ops.cast(attended, value.dtype)))
        return y + self.mlp_drop(self.mlp(self.norm2(y)))


def _pad(x, before, after):
    """Zeros around the last two axes of (B, C, H, W): ``before`` rows/columns on top/left, ``after``
    on bottom/right; a negative ``after`` crops. Zeros by concatenation (ops.pad is slow on CPU);
    zeros_like keeps the batch dynamic."""
    if after < 0:
        x = x[:, :, :after, :after]
        after = 0
    if before:
        x = ops.concat((ops.zeros_like(x[:, :, :, :before]), x), axis=3)
        x = ops.concat((ops.zeros_like(x[:, :, :before]), x), axis=2)
    if after:
        x = ops.concat((x, ops.zeros_like(x[:, :, :, :after])), axis=3)
        x = ops.concat((x, ops.zeros_like(x[:, :, :after])), axis=2)
    return x


def _windows(blocks, axis, grid, count, last):
    """Along a (block, offset-in-block) pair of axes of (B, C, blocks, s, blocks, s) -- the rows
    (``axis`` 2) or the columns (4) -- window i is blocks i .. i+count-1, the last of them cut to its
    first ``last`` offsets, concatenated along the offsets."""
    stride = blocks.shape[axis + 1]
    parts = []
    for first in range(count):
        stop, width = first + grid, stride if first < count - 1 else last
        if axis == 2:
            parts.append(blocks[:, :, first:stop, :width])
        else:
            parts.append(blocks[:, :, :, :, first:stop, :width])
    return parts[0] if count == 1 else ops.concat(parts, axis=axis + 1)


def _unfold_by_blocks(x, kernel, stride, padding, grid):
    """torch.nn.Unfold on (B, C, H, W) by slicing and concatenation only, as tokens (B, L, C·k·k).

    Cut the padded image into stride x stride blocks: window i spans blocks i .. i+n-1 (n =
    ceil(k/s)), the last one up to row k-(n-1)·s. So all L windows at once are n slices of the
    block grid, concatenated, per axis. Pure data movement, hence exact in any dtype, and every
    backend has fast kernels for it (reshape, strided slice, concat, transpose)."""
    count = -(-kernel // stride)
    last = kernel - (count - 1) * stride
    num_blocks = grid + count - 1
    x = _pad(x, padding, num_blocks * stride - x.shape[2] - padding)
    chans = x.shape[1]
    blocks = x.reshape(-1, chans, num_blocks, stride, num_blocks, stride)
    rows = _windows(blocks, 2, grid, count, last)       # (B, C, G, k, blocks, s)
    windows = _windows(rows, 4, grid, count, last)      # (B, C, G, k, G, k)
    return windows.transpose(0, 2, 4, 1, 3, 5).reshape(-1, grid * grid, chans * kernel * kernel)


def _unfold_by_im2col(x, kernel, stride, padding):
    """torch.nn.Unfold on (B, C, H, W) by MindSpore's Im2Col, as tokens (B, L, C·k·k)."""
    dtype = x.dtype
    if dtype == ms.bfloat16:
        x = ops.cast(x, ms.float32)   # Im2Col takes no bfloat16; the rearrangement is exact in float32
    tokens = ops.unfold(x, kernel_size=kernel, dilation=1, padding=padding, stride=stride)
    return ops.cast(tokens, dtype).transpose(0, 2, 1)


def soft_split(x, split, grid, use_im2col):
    """The T2T soft split, torch.nn.Unfold(k, s, p) on (B, C, H, W), as tokens (B, grid², C·k·k),
    channel order (c, ki, kj). ``use_im2col`` picks the Im2Col primitive (the fastest on CPU);
    otherwise slices and concatenations (``_unfold_by_blocks``): on Ascend Im2Col and its gradient
    are AI CPU kernels only, and a MindIR may meet a runtime without them. Both give the same numbers."""
    kernel, stride, padding = split
    if use_im2col:
        return _unfold_by_im2col(x, kernel, stride, padding)
    return _unfold_by_blocks(x, kernel, stride, padding, grid)


def im2col_is_fastest():
    """Im2Col is a native kernel on CPU and faster there than the sliced form (benchmarks/soft_split.py);
    Ascend runs it on the AI CPU only, so Ascend and GPU take the sliced form."""
    return ms.get_context("device_target") == "CPU"


def use_portable_soft_split(network):
    """Switch every T2T tokenizer of ``network`` to the sliced soft split, in place. Export calls this:
    an exported graph must run with fast kernels wherever it is deployed (no Im2Col)."""
    for _, cell in network.cells_and_names():
        if isinstance(cell, T2TTokenizer):
            cell.use_im2col = False
    return network


class T2TTokenizer(nn.Cell):
    """soft split -> Performer -> soft split -> Performer -> soft split -> Linear.

    ``geometry.splits`` are the three soft splits, ``geometry.split_grids`` the grid after each."""

    def __init__(self, geometry, token_dim, embed_dim, in_chans=3):
        super().__init__()
        self.splits = geometry.splits
        self.split_grids = geometry.split_grids
        first_kernel, later_kernel = self.splits[0][0], self.splits[1][0]
        self.performer1 = TokenPerformer(in_chans * first_kernel * first_kernel, token_dim)
        self.performer2 = TokenPerformer(token_dim * later_kernel * later_kernel, token_dim)
        self.project = dense(token_dim * later_kernel * later_kernel, embed_dim)
        self.token_dim = token_dim
        self.use_im2col = im2col_is_fastest()   # chosen once, for the device the model is built on

    def _as_grid(self, tokens, grid):
        return tokens.transpose(0, 2, 1).reshape(-1, self.token_dim, grid, grid)

    def construct(self, images):
        splits, grids, im2col = self.splits, self.split_grids, self.use_im2col
        tokens = self.performer1(soft_split(images, splits[0], grids[0], im2col))
        tokens = self.performer2(soft_split(self._as_grid(tokens, grids[0]), splits[1], grids[1], im2col))
        return self.project(soft_split(self._as_grid(tokens, grids[1]), splits[2], grids[2], im2col))


class PatchTokenizer(nn.Cell):
    """Non-overlapping patch convolution (DeiT); padding lets 224 px give a 10x10 grid.

    Computed as what it is, one matrix product of every (C·k·k) patch with the (D, C·k·k) kernel:
    zero-pad, cut the image into its grid of patches by reshape/transpose, multiply. Exactly the
    convolution (stride = kernel), and on CPU 40-150x faster than MindSpore's strided Conv2d. The
    ``nn.Conv2d`` stays as the holder of the weight (D, C, k, k) and bias, so checkpoints are
    unchanged; the patch vector's order (c, ki, kj) is the weight's own."""

    def __init__(self, geometry, embed_dim, in_chans=3):
        super().__init__()
        (kernel, stride, padding), = geometry.splits
        if stride != kernel:
            raise ValueError(f"PatchTokenizer needs non-overlapping patches (stride = kernel), got {geometry.splits}")
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel, stride=stride, pad_mode="pad", padding=padding,
                              has_bias=True, weight_init="he_uniform")
        self.embed_dim = embed_dim
        self.in_chans = in_chans
        self.kernel, self.padding, self.grid = kernel, padding, geometry.grid
        self.num_tokens = geometry.grid * geometry.grid
        self.matmul_transpose_b = ops.MatMul(transpose_b=True)

    def construct(self, images):
        kernel, padding, grid, chans = self.kernel, self.padding, self.grid, self.in_chans
        if padding:   # zeros by concatenation: ops.pad is slow on CPU; zeros_like keeps the batch dynamic
            side = ops.zeros_like(images[:, :, :, :padding])
            images = ops.concat((side, images, side), axis=3)
            top = ops.zeros_like(images[:, :, :padding, :])
            images = ops.concat((top, images, top), axis=2)
        span = grid * kernel   # like the convolution, ignore a last row/column no patch covers
        if images.shape[2] != span:
            images = images[:, :, :span, :span]
        patches = images.reshape(-1, chans, grid, kernel, grid, kernel).transpose(0, 2, 4, 1, 3, 5)
        patches = patches.reshape(-1, chans * kernel * kernel)
        weight = ops.cast(self.proj.weight.reshape(self.embed_dim, -1), patches.dtype)
        tokens = ops.bias_add(self.matmul_transpose_b(patches, weight), ops.cast(self.proj.bias, patches.dtype))
        return tokens.reshape(-1, self.num_tokens, self.embed_dim)


def build_tokenizer(config, geometry):
    if config.family == "t2t":
        return T2TTokenizer(geometry, config.token_dim, config.embed_dim)
    return PatchTokenizer(geometry, config.embed_dim)


def position_embedding(config, geometry):
    """T2T: the fixed sinusoid table (not trained); DeiT: a learned table."""
    num_tokens = geometry.num_tokens
    if config.family == "t2t":
        return Parameter(Tensor(sinusoid_table(num_tokens, config.embed_dim)[None]), requires_grad=False)
    return Parameter(initializer(TruncatedNormal(0.02), [1, num_tokens, config.embed_dim], ms.float32))
