"""Transformer building blocks of a DVT stage: MLP, attention that exposes its relation, block.

How GELU and LayerNorm compute is a module-level switch read when a layer is built, as timm's
``set_fused_attn``: MindSpore's default ops unless the runtime set-up of a command chose the
device's faster kernels (``use_device_kernels``; or ``use_cpu_kernels`` / ``use_fused_gelu`` one
by one). Building a layer compiles, reads and writes nothing.
"""
import logging

import mindspore as ms
from mindspore import mint, nn, ops
from mindspore.common.initializer import TruncatedNormal, initializer
from mindcv.models.layers.drop_path import DropPath

from . import cpu_kernels

__all__ = ["use_cpu_kernels", "use_fused_gelu", "use_device_kernels", "dense", "GELU", "LayerNorm", "layer_norm",
           "drop_path", "Mlp", "Attention", "Block"]

LOGGER = logging.getLogger(__name__)
_FUSED_GELU = {"on": False}


def use_cpu_kernels(on=True):
    """Float32 GELU and LayerNorm of the layers built after this call run the compiled CPU kernels
    (``cpu_kernels``; built now if not in the cache) or, with ``on=False`` (the default state),
    MindSpore's native ops. Returns whether the kernels are on (False, warned, when they cannot be
    built)."""
    return cpu_kernels.enable(on)


def use_fused_gelu(on=True):
    """GELU of the layers built after this call runs ``mint.nn.functional.gelu`` (one fused kernel
    on Ascend; MindSpore 2.10's CPU backend has no graph-mode kernel for it) or, with ``on=False``
    (the default state), ``ops.gelu``'s six elementwise kernels. The compiled CPU kernels, where
    on, take float32 first."""
    _FUSED_GELU["on"] = bool(on)


def use_device_kernels(device_target):
    """The faster exact kernels of ``device_target`` for the layers built from now on: the compiled
    CPU kernels on CPU, the fused GELU on Ascend, MindSpore's default ops on GPU. Called by the
    runtime set-up of training, calibration and the benchmarks; library use and export keep the
    default ops."""
    cpu = use_cpu_kernels(device_target == "CPU")
    use_fused_gelu(device_target == "Ascend")
    LOGGER.info("GELU/LayerNorm kernels: %s", "compiled CPU kernels" if cpu else
                "fused GELU (mint)" if device_target == "Ascend" else "MindSpore's default ops")


def dense(in_features, out_features, has_bias=True):
    """A Linear layer with ViT initialisation (truncated normal 0.02, zero bias)."""
    return nn.Dense(in_features, out_features, has_bias=has_bias,
                    weight_init=initializer(TruncatedNormal(0.02), [out_features, in_features]),
                    bias_init="zeros")


class GELU(nn.GELU):
    """Exact (erf) GELU: float32 through the compiled CPU kernel where ``use_cpu_kernels`` was on
    when it was built, else the fused mint GELU where ``use_fused_gelu`` was, else ``ops.gelu``.
    A subclass of ``nn.GELU`` so that mixed-precision lists treat it as one."""

    def __init__(self):
        super().__init__(approximate=False)
        self.cpu_kernel = cpu_kernels.gelu_op()
        self.use_cpu_kernel = self.cpu_kernel is not None
        self.use_fused = _FUSED_GELU["on"]

    def construct(self, x):
        if self.use_cpu_kernel and x.dtype == ms.float32:
            return self.cpu_kernel(x)
        if self.use_fused:
            return mint.nn.functional.gelu(x)
        return ops.gelu(x, approximate="none")


class LayerNorm(nn.LayerNorm):
    """LayerNorm over the last axis; float32 through the compiled CPU kernel where
    ``use_cpu_kernels`` was on when it was built. A subclass of ``nn.LayerNorm``: the same ``gamma``/``beta``
    parameters (checkpoints unchanged), and mixed precision keeps it in float32 as it keeps
    ``nn.LayerNorm`` (amp's black list)."""

    def __init__(self, dim, eps):
        super().__init__((dim,), epsilon=eps)
        self.cpu_kernel = cpu_kernels.layer_norm_op()
        self.use_cpu_kernel = self.cpu_kernel is not None
        self.epsilon_tensor = ms.Tensor([eps], ms.float32)

    def construct(self, x):
        if self.use_cpu_kernel and x.dtype == ms.float32 and self.gamma.dtype == ms.float32:
            return self.cpu_kernel(x, self.gamma, self.beta, self.epsilon_tensor)[0]
        y, _, _ = self.layer_norm(x, self.gamma.astype(x.dtype), self.beta.astype(x.dtype))
        return y


def layer_norm(dim, eps):
    return LayerNorm(dim, eps)


def drop_path(rate):
    """Stochastic depth where it acts; nothing in the graph where the rate is 0."""
    return DropPath(rate) if rate > 0 else nn.Identity()


class Mlp(nn.Cell):
    """in -> hidden -> out with exact (erf) GELU, as in the published models."""

    def __init__(self, in_features, hidden_features, out_features, drop=0.0):
        super().__init__()
        self.fc1 = dense(in_features, hidden_features)
        self.act = GELU()
        self.fc2 = dense(hidden_features, out_features)
        self.drop = nn.Dropout(p=drop)

    def construct(self, x):
        x = self.drop(self.act(self.fc1(x)))
        return self.drop(self.fc2(x))


class Attention(nn.Cell):
    """Multi-head self-attention returning its pre-softmax logits (the block's *relation*).

    ``relation_bias`` (B, H, N, N) is the relation reused from the previous stage; it is added to
    q·kᵀ·scale before the softmax, and the sum is what this block hands on. Logits, sum and
    softmax are float32 whatever the compute dtype (docs/model.md, "Precision"); so is the relation.
    """

    def __init__(self, dim, num_heads, qkv_bias, drop=0.0):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.qkv = dense(dim, dim * 3, has_bias=qkv_bias)
        self.proj = dense(dim, dim)
        self.proj_drop = nn.Dropout(p=drop)
        self.query_key = ops.BatchMatMul(transpose_b=True)

    def construct(self, x, relation_bias=None):
        _, tokens, dim = x.shape
        # q, k, v by splitting the projection's last axis: the same numbers as slicing a
        # (3, B, H, N, d) transpose of it, without copying the whole projection through a transpose.
        query, key, value = ops.split(self.qkv(x), dim, axis=-1)
        query = ops.cast(self._heads(query, tokens), ms.float32)
        key = ops.cast(self._heads(key, tokens), ms.float32)
        value = self._heads(value, tokens)
        relation = self.query_key(query, key) * self.scale      # q·kᵀ without transposing k first
        if relation_bias is not None:
            relation = relation + ops.cast(relation_bias, ms.float32)
        weights = ops.cast(ops.softmax(relation, axis=-1), value.dtype)
        out = ops.matmul(weights, value)
        out = out.transpose(0, 2, 1, 3).reshape(-1, tokens, dim)
        return self.proj_drop(self.proj(out)), relation

    def _heads(self, x, tokens):
        """(B, N, D) -> (B, H, N, D/H)."""
        return x.reshape(-1, tokens, self.num_heads, self.head_dim).transpose(0, 2, 1, 3)


class Block(nn.Cell):
    """Pre-norm transformer block; with ``feature_reuse`` its MLP also sees the previous stage's
    feature, resampled to this stage's grid (LN2 and fc1 are then ``dim + feature_reuse.out_dim`` wide)."""

    def __init__(self, dim, num_heads, mlp_ratio, qkv_bias, eps, drop=0.0, drop_path_rate=0.0,
                 feature_reuse=None):
        super().__init__()
        mlp_in = dim + (feature_reuse.out_dim if feature_reuse is not None else 0)
        self.norm1 = layer_norm(dim, eps)
        self.attn = Attention(dim, num_heads, qkv_bias, drop)
        self.drop_path = drop_path(drop_path_rate)
        self.feature_reuse = feature_reuse
        self.norm2 = layer_norm(mlp_in, eps)
        self.mlp = Mlp(mlp_in, int(dim * mlp_ratio), dim, drop)

    def construct(self, x, prev_feature=None, relation_bias=None):
        attended, relation = self.attn(self.norm1(x), relation_bias)
        x = x + self.drop_path(attended)
        mlp_input = x
        if self.feature_reuse is not None:
            mlp_input = ops.concat((x, self.feature_reuse(prev_feature)), axis=2)
        x = x + self.drop_path(self.mlp(self.norm2(mlp_input)))
        return x, relation
