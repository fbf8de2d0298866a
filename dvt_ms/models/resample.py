"""Grid resampling between token grids, as the exact fixed linear map X -> M X Mᵀ.

The published code upsamples a g_prev x g_prev grid by nearest neighbour to u x u and then
adaptive-average-pools it to g x g. Both steps are linear and act on rows and columns separately,
so the whole map is one (g x g_prev) matrix M applied on each side. Applying M directly is exact
and never materialises the upsampled grid.
"""
import numpy as np
from mindspore import Tensor, nn, ops

__all__ = ["upsample_size", "resample_matrix", "GridResample"]


def upsample_size(src, dst):
    """The intermediate nearest-upsampled size: 7 -> 14 (for 10), 10 -> 20 (for 14), as published."""
    return src * -(-dst // src)


def resample_matrix(src, dst):
    """(dst x src) matrix of nearest-upsample(src -> u) followed by adaptive-avg-pool(u -> dst)."""
    up = upsample_size(src, dst)
    upsample = np.zeros((up, src), dtype=np.float64)
    upsample[np.arange(up), (np.arange(up) * src) // up] = 1.0
    pool = np.zeros((dst, up), dtype=np.float64)
    for i in range(dst):
        start, end = (i * up) // dst, -(-((i + 1) * up) // dst)   # PyTorch's adaptive pool bins
        pool[i, start:end] = 1.0 / (end - start)
    return (pool @ upsample).astype(np.float32)


class GridResample(nn.Cell):
    """Resample flattened row-major token grids from ``src`` x ``src`` to ``dst`` x ``dst``."""

    def __init__(self, src, dst):
        super().__init__()
        self.src, self.dst = src, dst
        matrix = resample_matrix(src, dst)
        self.matrix = Tensor(matrix)
        self.matrix_t = Tensor(np.ascontiguousarray(matrix.T))

    def tokens_then_channels(self, x):
        """(..., src², C) -> (..., dst², C): the token axis is second to last."""
        lead = (-1,) + x.shape[1:-2]   # batch first, possibly dynamic
        channels = x.shape[-1]
        rows = x.reshape((-1, self.src, self.src * channels))
        rows = ops.matmul(self.matrix, rows)                                  # resample grid rows
        cols = rows.reshape((-1, self.src, channels))
        cols = ops.matmul(self.matrix, cols)                                  # resample grid columns
        return cols.reshape(lead + (self.dst * self.dst, channels))

    def tokens_last(self, x):
        """(..., src²) -> (..., dst²): the token axis is last."""
        lead = (-1,) + x.shape[1:-1]
        grid = x.reshape((-1, self.src, self.src))
        grid = ops.matmul(ops.matmul(self.matrix, grid), self.matrix_t)
        return grid.reshape(lead + (self.dst * self.dst,))
