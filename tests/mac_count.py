"""Counting the multiply-accumulates a Cell really performs, by watching its matrix products run.

An independent check of ``dvt_ms.models.flops``: instead of a formula per layer, the Cells run once
in PyNative mode while every matrix product (``ops.matmul``, the ``MatMul`` primitive behind
``nn.Dense``, the patch embedding and the relation reuse, the ``BatchMatMul`` primitive of q·kᵀ, and the ``Conv2D`` primitive) records
the MACs its operand shapes imply. Products with a constant row or column (a sum written as a
matmul: the Performer's Σ kp and |t|²/2) are additions, not MACs, and are left out as the FLOPs
convention leaves sums out; the products with
the fixed resampling matrices are kept apart (``resample``), since the Cells apply the map as one
Kronecker product while the analytic count takes its separable cost (see flops.py).
"""
import contextlib

import numpy as np
import mindspore as ms
from mindspore import ops
from mindspore.ops.auto_generate.gen_ops_prim import BatchMatMul, MatMul
from mindspore.ops.operations.nn_ops import Conv2D


def _matmul_macs(a_shape, b_shape):
    """MACs of ``a @ b`` with numpy's broadcasting of the leading (batch) dimensions."""
    if len(b_shape) == 1 or len(a_shape) == 1:
        raise AssertionError(f"vector product {a_shape} @ {b_shape} is not expected in the model")
    batch = np.broadcast_shapes(tuple(a_shape[:-2]), tuple(b_shape[:-2]))
    n, k = a_shape[-2:]
    k2, m = b_shape[-2:]
    assert k == k2, (a_shape, b_shape)
    return int(np.prod(batch, dtype=np.int64)) * n * k * m


class MacCounter:
    """``counts["compute"]``: MACs of every product but the resampling ones (``counts["resample"]``)."""

    def __init__(self, resample_shapes):
        self.resample_shapes = set(resample_shapes)
        self.counts = {"compute": 0, "resample": 0}

    def _kind(self, *operands):
        for operand in operands:
            shape = tuple(operand.shape)
            if len(shape) == 2 and shape in self.resample_shapes:
                return "resample"
            if len(shape) == 2 and 1 in shape and np.unique(operand.asnumpy()).size == 1:
                return "sum"   # a product with a constant row or column is a (scaled) sum
        return "compute"

    def _add(self, kind, macs):
        if kind != "sum":
            self.counts[kind] += macs

    @contextlib.contextmanager
    def watching(self, monkeypatch):
        functional = ops.matmul
        primitive_call = MatMul.__call__
        batch_call = BatchMatMul.__call__
        conv_call = Conv2D.__call__

        def matmul(a, b):
            self._add(self._kind(a, b), _matmul_macs(a.shape, b.shape))
            return functional(a, b)

        def matmul_primitive(prim, a, b):
            a_shape = tuple(a.shape)[::-1] if prim.transpose_a else tuple(a.shape)
            b_shape = tuple(b.shape)[::-1] if prim.transpose_b else tuple(b.shape)
            self._add(self._kind(a, b), _matmul_macs(a_shape, b_shape))
            return primitive_call(prim, a, b)

        def batch_matmul_primitive(prim, a, b):
            def last_two_swapped(shape, swap):
                return shape[:-2] + shape[:-3:-1] if swap else shape
            a_shape = last_two_swapped(tuple(a.shape), prim.transpose_a)
            b_shape = last_two_swapped(tuple(b.shape), prim.transpose_b)
            self._add(self._kind(a, b), _matmul_macs(a_shape, b_shape))
            return batch_call(prim, a, b)

        def conv(prim, x, weight):
            out = conv_call(prim, x, weight)
            batch, out_channels, height, width = out.shape
            _, in_per_group, kernel_h, kernel_w = weight.shape
            self._add("compute", batch * out_channels * height * width * in_per_group * kernel_h * kernel_w)
            return out

        with monkeypatch.context() as patch:
            patch.setattr(ops, "matmul", matmul)
            patch.setattr(MatMul, "__call__", matmul_primitive)
            patch.setattr(BatchMatMul, "__call__", batch_matmul_primitive)
            patch.setattr(Conv2D, "__call__", conv)
            previous = ms.get_context("mode")
            ms.set_context(mode=ms.PYNATIVE_MODE)
            try:
                yield self
            finally:
                ms.set_context(mode=previous)


def resample_shapes(config):
    """The shapes of the fixed resampling matrices of ``config``'s reuse paths (M ⊗ M, diag(1, M ⊗ M)
    and its transpose)."""
    shapes = set()
    for geometry in config.exits[1:]:
        n, n_prev = geometry.grid ** 2, geometry.prev_grid ** 2
        shapes |= {(n, n_prev), (1 + n, 1 + n_prev), (1 + n_prev, 1 + n)}
    return shapes


def count_stage_macs(model, images, monkeypatch):
    """Run ``model`` on ``images`` stage by stage; returns each stage's {"compute": MACs,
    "resample": MACs} and its logits."""
    per_stage, logits = [], []
    feature = relations = None
    for stage in model.stages:
        counter = MacCounter(resample_shapes(model.config))
        with counter.watching(monkeypatch):
            if feature is None:
                exit_logits, feature, relations = stage(images)
            else:
                exit_logits, feature, relations = stage(images, feature, relations)
        per_stage.append(counter.counts)
        logits.append(exit_logits.asnumpy())
    return per_stage, logits
