"""Grid resampling between token grids, as the exact fixed linear map X -> M X Mᵀ.

The published code upsamples a g_prev x g_prev grid by nearest neighbour to u x u and then
adaptive-average-pools it to g x g. Both steps are linear and act on rows and columns separately,
so the whole map is one (g x g_prev) matrix M applied on each side. Applying M directly is exact
and never materialises the upsampled grid.
"""
import numpy as np

__all__ = ["upsample_size", "resample_matrix", "grid_resample_matrix", "with_class_token"]


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


def grid_resample_matrix(src, dst):
    """(dst² x src²) matrix M ⊗ M: ``M X Mᵀ`` on a row-major flattened src x src grid, as one map."""
    matrix = resample_matrix(src, dst).astype(np.float64)
    return np.kron(matrix, matrix).astype(np.float32)


def with_class_token(grid_matrix, class_token=1.0):
    """diag(class_token, G): the grid map G on tokens laid out as [class token, grid tokens...], the
    class token passed through unchanged (1) or replaced by zeros (0)."""
    rows, cols = grid_matrix.shape
    full = np.zeros((1 + rows, 1 + cols), dtype=np.float32)
    full[0, 0] = class_token
    full[1:, 1:] = grid_matrix
    return full
