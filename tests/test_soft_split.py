"""The T2T soft split by slices (the form Ascend, GPU and exported graphs run) against MindSpore's
Im2Col (``ops.unfold``, torch.nn.Unfold's layout), and the golden logits through it."""
import numpy as np
import mindspore as ms
import pytest
from mindspore import nn, ops

import dvt_ms
from dvt_ms.models.tokenizers import T2TTokenizer, soft_split, use_portable_soft_split
from helpers import converted_golden_model


def _preset_splits():
    """Every (split, input side, grid) of the T2T presets at 224 px, and at an img_size whose first
    padded image is larger than the windows cover (trailing rows ignored, as by Unfold)."""
    splits = set()
    for img_size in (224, 160):
        config = dvt_ms.build_config("dvt_t2t_vit_12", img_size=img_size)
        for geometry in config.exits:
            sides = (img_size,) + geometry.split_grids[:-1]
            splits.update(zip(geometry.splits, sides, geometry.split_grids))
    return sorted(splits)


SPLITS = _preset_splits()


CHANNELS, BATCH = 4, 2
SIZES = [BATCH * CHANNELS * side * side for _, side, _ in SPLITS]
STARTS = [sum(SIZES[:index]) for index in range(len(SPLITS))]


class _AllSplits(nn.Cell):
    """Every split of ``SPLITS`` in one graph (one compilation), by one method: one flat input (the
    images of all splits) and one flat output (their tokens), so that one gradient covers them all."""

    def __init__(self, use_im2col):
        super().__init__()
        self.use_im2col = use_im2col

    def construct(self, flat):
        return ops.concat([soft_split(flat[start:start + size].reshape(BATCH, CHANNELS, side, side), split, grid,
                                      self.use_im2col).reshape(-1)
                           for (split, side, grid), start, size in zip(SPLITS, STARTS, SIZES)])


def _per_split(flat_tokens):
    shapes = [(BATCH, grid * grid, CHANNELS * split[0] ** 2) for split, _, grid in SPLITS]
    ends = np.cumsum([np.prod(shape) for shape in shapes])
    return [part.reshape(shape) for part, shape in zip(np.split(flat_tokens, ends[:-1]), shapes)]


def _input_gradient(splits, flat, sens):
    """The backward pass with ``sens`` as the incoming gradient."""
    return ops.GradOperation(sens_param=True)(splits)(flat, sens).asnumpy()


def test_preset_splits_cover_all_three_exits_and_a_cropped_input():
    assert {split for split, _, _ in SPLITS} >= {(14, 8, 3), (11, 6, 5), (7, 4, 2), (3, 2, 1)}
    assert any(side + 2 * pad > (grid - 1) * stride + kernel for (kernel, stride, pad), side, grid in SPLITS)


@pytest.mark.slow
def test_sliced_soft_split_equals_unfold_forward_and_backward():
    rng = np.random.default_rng(0)
    flat = ms.Tensor(rng.standard_normal(sum(SIZES)).astype(np.float32))
    sliced, im2col = _AllSplits(use_im2col=False), _AllSplits(use_im2col=True)
    expected = im2col(flat).asnumpy()
    for (split, side, _), got, want in zip(SPLITS, _per_split(sliced(flat).asnumpy()), _per_split(expected)):
        np.testing.assert_array_equal(got, want, err_msg=f"split {split} on {side} px")
    sens = ms.Tensor(rng.standard_normal(expected.shape).astype(np.float32))
    sliced_grad = _input_gradient(sliced, flat, sens)
    im2col_grad = _input_gradient(im2col, flat, sens)
    assert np.abs(im2col_grad).max() > 1   # windows overlap: pixels gather several contributions
    # up to ceil(k/s)² contributions per pixel, summed in another order
    np.testing.assert_allclose(sliced_grad, im2col_grad, rtol=0, atol=1e-5)


def test_sliced_soft_split_keeps_half_precision_exact():
    """Pure data movement: float16 and bfloat16 values come out bit for bit (Im2Col has no bfloat16)."""
    split, side, grid = (3, 2, 1), 19, 10
    values = np.random.default_rng(1).standard_normal((2, 4, side, side)).astype(np.float32)
    for dtype in (ms.float16, ms.bfloat16):
        rounded = ms.Tensor(values).astype(dtype)
        want = soft_split(rounded.astype(ms.float32), split, grid, True).asnumpy()
        got = soft_split(rounded, split, grid, False)
        assert got.dtype == dtype
        np.testing.assert_array_equal(got.astype(ms.float32).asnumpy(), want)


def test_tokenizer_takes_im2col_on_cpu_and_export_switches_it_off():
    model = dvt_ms.create_model("dvt_t2t_vit_12", embed_dim=64, depth=1, num_heads=1, num_classes=10)
    tokenizers = [cell for _, cell in model.cells_and_names() if isinstance(cell, T2TTokenizer)]
    assert len(tokenizers) == 3 and all(t.use_im2col for t in tokenizers)   # conftest: device CPU
    use_portable_soft_split(model)
    assert not any(t.use_im2col for t in tokenizers)


def test_t2t_golden_logits_hold_through_the_sliced_soft_split(golden_dir, converted_dir):
    model, _ = converted_golden_model(golden_dir, "t2t", converted_dir)
    use_portable_soft_split(model)
    golden = np.load(golden_dir / "t2t.npz")
    logits = model(ms.Tensor(golden["images"]))
    for exit_index, exit_logits in enumerate(logits):
        np.testing.assert_allclose(exit_logits.asnumpy(), golden[f"logits_exit{exit_index}"], rtol=0, atol=1e-4,
                                   err_msg=f"t2t exit {exit_index + 1}")


@pytest.mark.slow
def test_t2t_parameter_gradients_are_the_same_with_either_soft_split():
    """Through the Performers the soft splits' gradients reach every tokenizer weight alike."""
    images = ms.Tensor(np.random.default_rng(2).standard_normal((2, 3, 64, 64)).astype(np.float32))
    gradients = []
    for portable in (False, True):
        ms.set_seed(0)
        model = dvt_ms.create_model("dvt_t2t_vit_12", img_size=64, embed_dim=32, depth=1, num_heads=1,
                                    token_dim=16, num_classes=3)
        model.set_train(False)
        if portable:
            use_portable_soft_split(model)
        weights = model.trainable_params()
        loss = nn.WithLossCell(_SummedLogits(model), nn.MSELoss())
        grads = ops.GradOperation(get_by_list=True)(loss, ms.ParameterTuple(weights))(images, ms.Tensor(0.0))
        gradients.append({weight.name: grad.asnumpy() for weight, grad in zip(weights, grads)})
    first_performer = [grad for name, grad in gradients[1].items() if "performer1" in name]
    assert first_performer and all(np.abs(grad).max() > 0 for grad in first_performer)   # behind two splits
    for name in gradients[0]:
        np.testing.assert_allclose(gradients[1][name], gradients[0][name], rtol=1e-4, atol=1e-6, err_msg=name)


class _SummedLogits(nn.Cell):
    def __init__(self, model):
        super().__init__(auto_prefix=False)
        self.model = model

    def construct(self, images):
        return sum(logits.sum() for logits in self.model(images))


# GPU graphs are made as Ascend's are (test_only_the_cpu_gets_the_im2col_soft_split).
@pytest.mark.slow
@pytest.mark.parametrize("graph_target", ["Ascend", "CPU"])
def test_exported_t2t_graphs_carry_im2col_only_when_made_for_the_cpu(tmp_path, graph_target):
    from dvt_ms.contract.manifest import load_manifest
    from dvt_ms.deploy.engine import warn_if_made_for_another_device
    from dvt_ms.export.writer import export_model
    model = dvt_ms.create_model("dvt_t2t_vit_12", img_size=64, embed_dim=32, depth=1, num_heads=1, token_dim=16,
                                num_classes=3)
    preprocess = {"img_size": 64, "crop_pct": 0.875, "resize": 73, "interpolation": "bicubic",
                  "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    export_model(model, tmp_path / "out", "dvt_t2t_vit_12", preprocess, graph_target=graph_target)
    graphs = sorted((tmp_path / "out").glob("exit*.mindir"))
    assert len(graphs) == 3
    for graph in graphs:
        content = graph.read_bytes()
        if graph_target == "CPU":   # the CPU's fastest form; MindSpore's CPU runtime has the kernel
            assert b"Im2Col" in content, graph.name
        else:                       # Ascend runs Im2Col on the AI CPU only, and Lite may lack it
            assert b"StridedSlice" in content and b"Im2Col" not in content, graph.name
    manifest = load_manifest(tmp_path / "out")
    assert manifest["graph_target"] == graph_target   # deployment can tell which graphs it was given
    assert warn_if_made_for_another_device(manifest, graph_target, "out") is None
    elsewhere = "Ascend" if graph_target == "CPU" else "CPU"
    assert f"exported for {graph_target}" in warn_if_made_for_another_device(manifest, elsewhere, "out")


def test_only_the_cpu_gets_the_im2col_soft_split():
    from dvt_ms.models.tokenizers import T2TTokenizer, use_soft_split_for
    model = dvt_ms.create_model("dvt_t2t_vit_12", img_size=64, embed_dim=32, depth=1, num_heads=1, token_dim=16,
                                num_classes=3)
    tokenizers = [cell for _, cell in model.cells_and_names() if isinstance(cell, T2TTokenizer)]
    assert len(tokenizers) == 3
    for device, im2col in (("CPU", True), ("GPU", False), ("Ascend", False)):
        use_soft_split_for(model, device)
        assert [t.use_im2col for t in tokenizers] == [im2col] * 3, device
