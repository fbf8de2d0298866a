"""Every registered preset, as timm's tests iterate ``list_models()``: it builds, runs forward and
backward (every weight but the provably unused ones gets a gradient), its analytic FLOPs equal the
MACs its Cells perform, and it exports MindIR graphs that compute what its Cells do (slow).

Presets run at reduced width and depth (the cost of a test) with their real token grids and image
size, so every exit's geometry, tokenizer and reuse path is the preset's own.
"""
import numpy as np
import mindspore as ms
import pytest
from mindspore import nn

import dvt_ms
from dvt_ms.models.flops import model_flops
from dvt_ms.models.presets import build_config, list_presets
from mac_count import count_stage_macs

PRESET_NAMES = list_presets()
NUM_CLASSES = 5


def reduced(name):
    """Preset ``name`` at test width: D 32, two blocks per exit (so that a block follows a reuse),
    2 heads; its own grids and image size."""
    overrides = dict(embed_dim=32, depth=2, num_heads=2, num_classes=NUM_CLASSES)
    if build_config(name).family == "t2t":
        overrides["token_dim"] = 16
    return build_config(name, **overrides)


def _images(config, batch=2, seed=0):
    rng = np.random.default_rng(seed)
    return ms.Tensor(rng.standard_normal((batch, 3, config.img_size, config.img_size)).astype(np.float32))


def test_the_registry_lists_the_published_and_the_small_presets():
    assert set(list_presets(published=True)) == {"dvt_t2t_vit_12", "dvt_t2t_vit_14", "dvt_deit_small"}
    assert {"dvt_demo", "dvt_tiny"} <= set(list_presets(published=False))
    assert sorted(list_presets(published=True) + list_presets(published=False)) == PRESET_NAMES


def _unreachable_weights(model):
    """Weights no exit's loss depends on: the last block of the last exit feeds its feature reuse
    into patch tokens only (the token-wise MLP), and after that block nothing mixes patch tokens
    into the class token the head reads, nor does a later exit read the feature."""
    last_block = model.stages[-1].blocks[-1]
    return {id(param) for param in last_block.feature_reuse.trainable_params()} if last_block.feature_reuse else set()


@pytest.fixture
def pynative():
    """Gradients are a property of the math, not of the compiler: PyNative runs them without
    compiling a backward graph per preset (the training tests compile the train step)."""
    previous = ms.get_context("mode")
    ms.set_context(mode=ms.PYNATIVE_MODE)
    yield
    ms.set_context(mode=previous)


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_every_preset_runs_backward_reaching_every_weight_that_matters(name, pynative):
    ms.set_seed(0)
    model = dvt_ms.DVT(reduced(name))
    model.set_train(True)
    loss_fn = nn.CrossEntropyLoss()
    labels = ms.Tensor(np.array([1, 3], np.int32))

    def loss(images):
        return sum(loss_fn(exit_logits, labels) for exit_logits in model(images))

    params = model.trainable_params()
    _, grads = ms.value_and_grad(loss, None, params)(_images(model.config))
    assert all(np.isfinite(grad.asnumpy()).all() for grad in grads)
    without_gradient = {id(param) for param, grad in zip(params, grads) if not np.abs(grad.asnumpy()).max() > 0}
    assert without_gradient == _unreachable_weights(model)


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_every_preset_runs_forward_and_its_analytic_flops_are_the_macs_its_cells_perform(name, monkeypatch):
    """Counted by watching every matrix product of the Cells run (tests/mac_count.py), one image.

    Exact for everything but the resampling of the reuse paths, which the Cells run as one
    Kronecker product and flops.py counts at its separable cost (never more than what runs)."""
    model = dvt_ms.DVT(reduced(name))
    model.set_train(False)
    measured, logits = count_stage_macs(model, _images(model.config, batch=1), monkeypatch)
    assert len(logits) == 3 and all(x.shape == (1, NUM_CLASSES) and np.isfinite(x).all() for x in logits)
    for exit_index, (counted, analytic) in enumerate(zip(measured, model_flops(model.config))):
        breakdown = {key: round(value * 1e9) for key, value in analytic["breakdown"].items()}
        resample = breakdown["feature_reuse_resample"] + breakdown["relation_reuse_resample"]
        assert counted["compute"] == analytic["stage_macs"] - resample, (name, exit_index)
        assert (counted["resample"] > 0) == (resample > 0)
        assert resample <= counted["resample"]


@pytest.mark.slow
@pytest.mark.parametrize("name", PRESET_NAMES)
def test_every_preset_exports_graphs_that_compute_what_its_cells_do(name, tmp_path):
    from dvt_ms.export.writer import export_model
    from dvt_ms.contract.preprocessing import resize_for_crop
    ms.set_seed(0)
    model = dvt_ms.DVT(reduced(name))
    model.set_train(False)
    config = model.config
    preprocess = {"img_size": config.img_size, "crop_pct": 1.0, "resize": resize_for_crop(config.img_size, 1.0),
                  "interpolation": "bicubic", "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
    export_model(model, tmp_path / "export", name, preprocess)
    images = _images(config, batch=3, seed=1)
    expected = [logits.asnumpy() for logits in model(images)]
    reused = ()
    for exit_index in range(config.num_exits):
        graph = nn.GraphCell(ms.load(str(tmp_path / "export" / f"exit{exit_index + 1}.mindir")))
        outputs = graph(images, *reused)
        np.testing.assert_allclose(outputs[0].asnumpy(), expected[exit_index], atol=1e-4, rtol=1e-4)
        reused = tuple(outputs[1:])
