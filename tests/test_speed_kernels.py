"""The speed work (docs/performance.md): every reformulated layer computes what the layer it replaced
computed, the compiled CPU kernels equal the native ops forward and backward, building a model
compiles and writes nothing (the kernels are switched on explicitly), the model falls back to the
native ops where the kernels cannot be built, and exported graphs never contain them."""
import logging
import subprocess

import mindspore as ms
import numpy as np
import pytest
from mindspore import nn, ops
from mindspore.train import mind_ir_pb2

import dvt_ms
from dvt_ms.export.writer import export_model
from dvt_ms.models import cpu_kernels
from dvt_ms.models.layers import GELU, Attention, LayerNorm, use_cpu_kernels, use_device_kernels, use_fused_gelu
from dvt_ms.models.presets import patch_geometry
from dvt_ms.models.resample import resample_matrix
from dvt_ms.models.reuse import FeatureReuse, RelationReuse
from dvt_ms.models.tokenizers import PatchTokenizer, TokenPerformer
from helpers import GOLDEN_MODELS, converted_golden_model

DEMO = dict(embed_dim=64, depth=3, num_heads=2, mlp_ratio=2.0, img_size=64, patch_grids=[2, 4, 8], num_classes=8)


def random(shape, seed=0, scale=1.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def kernels_built():
    return cpu_kernels.library_path() is not None


needs_kernels = pytest.mark.skipif(not kernels_built(), reason="no C++ compiler: the CPU kernels cannot be built")


class _Geometry:
    def __init__(self, img_size, grid):
        self.splits = (patch_geometry(img_size, grid),)
        self.grid = grid


@pytest.mark.parametrize("img_size, grid", [(224, 7), (224, 10), (224, 14), (64, 2), (64, 8), (30, 4)])
def test_patch_embedding_as_a_matmul_equals_the_strided_convolution(img_size, grid):
    """Including padded grids (224 -> 10: 23 px patches, 3 px padding) and an odd overshoot whose
    last padded row and column no patch covers (30 -> 4: 8 px patches, padding 1)."""
    tokenizer = PatchTokenizer(_Geometry(img_size, grid), embed_dim=32)
    images = ms.Tensor(random((2, 3, img_size, img_size)))
    convolved = tokenizer.proj(images).asnumpy()                      # (B, D, g, g): the Conv2d itself
    expected = convolved.reshape(2, 32, grid * grid).transpose(0, 2, 1)
    np.testing.assert_allclose(tokenizer(images).asnumpy(), expected, rtol=0, atol=2e-5)


def test_attention_with_split_projection_equals_the_published_formula():
    """Against a float64 numpy attention laid out as published: qkv reshaped to (B, N, 3, H, d)."""
    batch, tokens, dim, heads = 2, 17, 32, 4
    attention = Attention(dim, heads, qkv_bias=True)
    x = random((batch, tokens, dim), seed=1)
    bias = random((batch, heads, tokens, tokens), seed=2)
    out, relation = attention(ms.Tensor(x), ms.Tensor(bias))
    w, b = attention.qkv.weight.asnumpy().astype(np.float64), attention.qkv.bias.asnumpy().astype(np.float64)
    qkv = (x @ w.T + b).reshape(batch, tokens, 3, heads, dim // heads).transpose(2, 0, 3, 1, 4)
    logits = qkv[0] @ qkv[1].transpose(0, 1, 3, 2) * (dim // heads) ** -0.5 + bias
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    mixed = (weights @ qkv[2]).transpose(0, 2, 1, 3).reshape(batch, tokens, dim)
    expected = mixed @ attention.proj.weight.asnumpy().T + attention.proj.bias.asnumpy()
    np.testing.assert_allclose(relation.asnumpy(), logits, rtol=0, atol=1e-5)
    np.testing.assert_allclose(out.asnumpy(), expected, rtol=0, atol=1e-5)


def test_performer_with_matmul_sums_equals_the_published_formula():
    """The Performer's |t|²/2 and Σ_t phi(k_t) as matmuls, against float64 numpy row sums."""
    with_native_ops = TokenPerformer(in_dim=27, dim=16)
    cpu_kernels.use_native_ops(with_native_ops)
    with_native_ops.set_train(False)
    x = random((2, 40, 27), seed=3)
    got = with_native_ops(ms.Tensor(x)).asnumpy()

    def layer_norm(t, cell):
        t = (t - t.mean(-1, keepdims=True)) / np.sqrt(t.var(-1, keepdims=True) + cell.epsilon)
        return t * cell.gamma.asnumpy() + cell.beta.asnumpy()

    def linear(t, cell):
        return t @ cell.weight.asnumpy().T.astype(np.float64) + cell.bias.asnumpy()

    def gelu(t):
        from math import erf
        return t * 0.5 * (1 + np.vectorize(erf)(t / np.sqrt(2)))

    p = with_native_ops
    w = p.random_features.asnumpy().astype(np.float64)
    k, q, v = np.split(linear(layer_norm(x.astype(np.float64), p.norm1), p.kqv), 3, axis=-1)

    def phi(t):
        return np.exp(t @ w.T - (t * t).sum(-1, keepdims=True) / 2) * p.feature_norm

    qf, kf = phi(q), phi(k)
    attended = qf @ (v.transpose(0, 2, 1) @ kf).transpose(0, 2, 1) / (qf @ kf.sum(1, keepdims=True).transpose(0, 2, 1) + 1e-8)
    y = v + linear(attended, p.proj)
    expected = y + linear(gelu(linear(layer_norm(y, p.norm2), p.mlp.fc1)), p.mlp.fc2)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)


@pytest.mark.parametrize("src, dst", [(7, 10), (10, 14), (2, 4), (3, 7)])
def test_relation_resampling_as_one_matrix_equals_resampling_each_token_axis(src, dst):
    """P R Pᵀ with P = diag(1, M ⊗ M) against the published rule applied axis by axis in numpy:
    class-token row and column kept, each patch axis's grid mapped X -> M X Mᵀ."""
    channels = 3
    reuse = RelationReuse(channels, src, dst)
    cpu_kernels.use_native_ops(reuse)
    prev = random((2, channels, 1 + src * src, 1 + src * src), seed=4)
    got = reuse(ms.Tensor(prev)).asnumpy()
    mixed = reuse.reduce(reuse.act(reuse.expand(ms.Tensor(prev)))).asnumpy().astype(np.float64)
    m = resample_matrix(src, dst).astype(np.float64)

    def resample_last(t):   # (..., src²) -> (..., dst²)
        grid = t.reshape(t.shape[:-1] + (src, src))
        return (m @ grid @ m.T).reshape(t.shape[:-1] + (dst * dst,))

    keys = np.concatenate((mixed[..., :1], resample_last(mixed[..., 1:])), axis=-1)
    rows = keys.swapaxes(-1, -2)
    expected = np.concatenate((rows[..., :1], resample_last(rows[..., 1:])), axis=-1).swapaxes(-1, -2)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("src, dst", [(7, 10), (10, 14), (2, 4)])
def test_feature_reuse_as_one_map_gives_a_zero_class_token_and_each_channel_grid_resampled(src, dst):
    """diag(0, M ⊗ M) applied once against the published rule in numpy: the class token's 48
    channels zero, every channel's patch grid mapped X -> M X Mᵀ."""
    reuse = FeatureReuse(dim=32, src_grid=src, dst_grid=dst, eps=1e-6)
    reuse.set_train(False)
    prev = random((2, 1 + src * src, 32), seed=13)
    got = reuse(ms.Tensor(prev)).asnumpy()
    compressed = reuse.mlp(reuse.norm(ms.Tensor(prev))).asnumpy().astype(np.float64)
    m = resample_matrix(src, dst).astype(np.float64)
    grids = compressed[:, 1:].transpose(0, 2, 1).reshape(2, -1, src, src)        # (B, C, src, src)
    patches = (m @ grids @ m.T).reshape(2, -1, dst * dst).transpose(0, 2, 1)
    expected = np.concatenate((np.zeros_like(compressed[:, :1]), patches), axis=1)
    assert got.shape == (2, 1 + dst * dst, reuse.out_dim)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    assert not got[:, 0].any()


class _GradOf(nn.Cell):
    """Gradients of sum(f(x) · cotangent) with respect to x and the cell's parameters."""

    def __init__(self, net):
        super().__init__()
        self.net = net
        self.grad = ops.GradOperation(get_all=True, get_by_list=True, sens_param=True)
        self.params = ms.ParameterTuple(net.trainable_params())

    def construct(self, x, cotangent):
        return self.grad(self.net, self.params)(x, cotangent)


def _kernel_and_native(make):
    assert use_cpu_kernels(True)
    with_kernel = make()
    use_cpu_kernels(False)
    native = make()
    assert with_kernel.use_cpu_kernel and not native.use_cpu_kernel
    return with_kernel, native


@needs_kernels
@pytest.mark.parametrize("shape", [(4, 50, 96), (2, 6, 11, 11), (3, 7)])
def test_gelu_kernel_equals_the_native_exact_gelu_forward_and_backward(shape):
    with_kernel, native = _kernel_and_native(GELU)
    x = ms.Tensor(random(shape, seed=5, scale=3.0))
    cotangent = ms.Tensor(random(shape, seed=6))
    np.testing.assert_allclose(with_kernel(x).asnumpy(), native(x).asnumpy(), rtol=0, atol=3e-6)
    (dx_kernel,), _ = _GradOf(with_kernel)(x, cotangent)
    (dx_native,), _ = _GradOf(native)(x, cotangent)
    np.testing.assert_allclose(dx_kernel.asnumpy(), dx_native.asnumpy(), rtol=0, atol=1e-5)


@needs_kernels
@pytest.mark.parametrize("shape, eps", [((4, 50, 96), 1e-6), ((2, 197, 384), 1e-5), ((5, 64), 1e-5)])
def test_layer_norm_kernel_equals_the_native_layer_norm_forward_and_backward(shape, eps):
    dim = shape[-1]

    def make():
        norm = LayerNorm(dim, eps)
        norm.gamma.set_data(ms.Tensor(1 + random((dim,), seed=7, scale=0.1)))
        norm.beta.set_data(ms.Tensor(random((dim,), seed=8, scale=0.1)))
        return norm

    with_kernel, native = _kernel_and_native(make)
    x = ms.Tensor(random(shape, seed=9, scale=2.0) + 3.0)
    cotangent = ms.Tensor(random(shape, seed=10))
    np.testing.assert_allclose(with_kernel(x).asnumpy(), native(x).asnumpy(), rtol=0, atol=1e-5)
    (dx_k,), (dgamma_k, dbeta_k) = _GradOf(with_kernel)(x, cotangent)
    (dx_n,), (dgamma_n, dbeta_n) = _GradOf(native)(x, cotangent)
    rows = int(np.prod(shape[:-1]))
    np.testing.assert_allclose(dx_k.asnumpy(), dx_n.asnumpy(), rtol=0, atol=1e-5)
    # parameter gradients are sums over all rows: float32 rounding grows with their number
    np.testing.assert_allclose(dgamma_k.asnumpy(), dgamma_n.asnumpy(), rtol=1e-4, atol=1e-6 * rows)
    np.testing.assert_allclose(dbeta_k.asnumpy(), dbeta_n.asnumpy(), rtol=1e-4, atol=1e-6 * rows)


@needs_kernels
def test_layer_norm_keeps_its_parameter_names_and_stays_float32_at_O2():
    assert use_cpu_kernels(True)
    model = dvt_ms.create_model("dvt_deit_small", **DEMO)
    names = {p.name for p in model.get_parameters()}
    assert "stages.0.blocks.0.norm1.gamma" in names and "stages.0.norm.beta" in names
    network = ms.amp.auto_mixed_precision(model, "O2", ms.float16)
    norms = [cell for _, cell in network.cells_and_names() if isinstance(cell, LayerNorm)]
    assert norms and all(norm.gamma.dtype == ms.float32 and norm.use_cpu_kernel for norm in norms)
    logits = network(ms.Tensor(random((2, 3, 64, 64), seed=11)))
    assert all(np.isfinite(exit_logits.asnumpy()).all() for exit_logits in logits)


def _no_compiling_or_probing(monkeypatch, tmp_path):
    """Make a compiler run or a read of the processor's identity fail the test; the cache in tmp_path."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"building a model ran or read something: {args[:1]}")
    monkeypatch.setattr(subprocess, "run", refuse)
    monkeypatch.setattr(cpu_kernels, "_processor_identity", refuse)
    cache = tmp_path / "cache"
    monkeypatch.setenv("DVT_CPU_KERNELS_CACHE", str(cache))
    return cache


def test_building_a_model_compiles_reads_and_writes_nothing_and_uses_the_default_ops(monkeypatch, tmp_path):
    cache = _no_compiling_or_probing(monkeypatch, tmp_path)
    model = dvt_ms.create_model("dvt_t2t_vit_12", **DEMO)
    assert not cache.exists()
    layers = [cell for _, cell in model.cells_and_names() if isinstance(cell, (GELU, LayerNorm))]
    assert layers and not any(layer.use_cpu_kernel for layer in layers)
    assert not any(layer.use_fused for layer in layers if isinstance(layer, GELU))


@needs_kernels
def test_cpu_kernels_switched_on_are_built_at_the_switch_and_used_by_layers_built_after_it(monkeypatch, tmp_path):
    before = GELU()
    assert use_cpu_kernels(True)
    _no_compiling_or_probing(monkeypatch, tmp_path)           # the build happened at the switch
    after_gelu, after_norm = GELU(), LayerNorm(8, 1e-6)
    assert after_gelu.use_cpu_kernel and after_norm.use_cpu_kernel and not before.use_cpu_kernel
    use_cpu_kernels(False)
    assert not GELU().use_cpu_kernel


@needs_kernels
def test_device_kernels_are_the_cpu_kernels_on_cpu_and_the_fused_gelu_on_ascend_only():
    use_device_kernels("CPU")
    assert GELU().use_cpu_kernel and not GELU().use_fused and LayerNorm(8, 1e-6).use_cpu_kernel
    use_device_kernels("Ascend")
    assert GELU().use_fused and not GELU().use_cpu_kernel and not LayerNorm(8, 1e-6).use_cpu_kernel
    use_device_kernels("GPU")
    assert not GELU().use_fused and not GELU().use_cpu_kernel


def test_kernels_switch_off_with_the_environment_variable(monkeypatch):
    monkeypatch.setenv("DVT_CPU_KERNELS", "0")
    assert not use_cpu_kernels(True)
    assert cpu_kernels.gelu_op() is None and cpu_kernels.layer_norm_op() is None
    assert not GELU().use_cpu_kernel and not LayerNorm(8, 1e-6).use_cpu_kernel


@pytest.mark.parametrize("family", sorted(GOLDEN_MODELS))
def test_model_without_a_compiler_warns_once_and_still_matches_golden(golden_dir, tmp_path, monkeypatch, caplog,
                                                                       family):
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("DVT_CPU_KERNELS_CACHE", str(tmp_path / "cache"))
    with caplog.at_level(logging.WARNING, logger=cpu_kernels.__name__):
        assert not use_cpu_kernels(True)
        model, _ = converted_golden_model(golden_dir, family, tmp_path / "converted")
    warnings = [r for r in caplog.records if r.name == cpu_kernels.__name__]
    assert len(warnings) == 1 and "native ops" in warnings[0].getMessage()
    assert not any(getattr(cell, "use_cpu_kernel", False) for _, cell in model.cells_and_names())
    golden = np.load(golden_dir / f"{family}.npz")
    for exit_index, logits in enumerate(model(ms.Tensor(golden["images"]))):
        np.testing.assert_allclose(logits.asnumpy(), golden[f"logits_exit{exit_index}"], rtol=0, atol=1e-4)


@needs_kernels
@pytest.mark.parametrize("family", sorted(GOLDEN_MODELS))
def test_model_built_with_the_cpu_kernels_matches_golden(golden_dir, converted_dir, family):
    assert use_cpu_kernels(True)
    model, _ = converted_golden_model(golden_dir, family, converted_dir)
    assert any(getattr(cell, "use_cpu_kernel", False) for _, cell in model.cells_and_names())
    golden = np.load(golden_dir / f"{family}.npz")
    for exit_index, logits in enumerate(model(ms.Tensor(golden["images"]))):
        np.testing.assert_allclose(logits.asnumpy(), golden[f"logits_exit{exit_index}"], rtol=0, atol=1e-4)


def _op_types(path):
    model = mind_ir_pb2.ModelProto()
    with open(path, "rb") as handle:
        model.ParseFromString(handle.read())
    graphs = [model.graph, *model.functions]
    return {node.op_type.split("::")[-1].split(":")[0] for graph in graphs for node in graph.node}


@pytest.mark.slow
@needs_kernels
def test_exported_graphs_use_only_native_ops_and_match_the_model(tmp_path):
    """A model built with every device kernel switched on (CPU kernels, fused GELU) exports graphs of
    MindSpore's portable operators only."""
    ms.set_seed(0)
    assert use_cpu_kernels(True)
    use_fused_gelu(True)
    model = dvt_ms.create_model("dvt_deit_small", **DEMO)
    model.set_train(False)
    assert any(getattr(cell, "use_cpu_kernel", False) for _, cell in model.cells_and_names())
    images = ms.Tensor(random((2, 3, 64, 64), seed=12))
    with_kernels = [logits.asnumpy() for logits in model(images)]
    preprocess = {"img_size": 64, "crop_pct": 0.875, "resize": 73, "interpolation": "bicubic",
                  "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    manifest = export_model(model, tmp_path, "dvt_deit_small", preprocess, overwrite=True)
    reused = ()
    for exit_index, info in enumerate(manifest["exits"]):
        op_types = _op_types(tmp_path / info["file"])
        assert "MatMul" in op_types or "BatchMatMul" in op_types
        assert not any("Custom" in op or "GeluExt" in op for op in op_types), sorted(op_types)
        outputs = nn.GraphCell(ms.load(str(tmp_path / info["file"])))(images, *reused)
        np.testing.assert_allclose(outputs[0].asnumpy(), with_kernels[exit_index], rtol=0, atol=1e-4)
        reused = tuple(outputs[1:])
