"""Mixed precision (docs/model.md, "Precision"): both families compile and train in float16 at O3
and bfloat16 at O2 (float16 at O2, the device default, trains in test_training.py), the golden
checkpoints' float16 logits stay close to float32, activations that overflow or underflow float16
stay finite, and the exported float16 graphs keep their float32 islands. Tests force the Ascend/GPU levels on the CPU (CPU alone would pick O0)."""
import numpy as np
import mindspore as ms
import pytest
from mindcv.loss import create_loss
from mindcv.optim import create_optimizer
from mindspore import nn
from mindspore.train import mind_ir_pb2   # MindSpore's MindIR protobuf: the graph as deployed

import dvt_ms
from dvt_ms.export.writer import export_model
from dvt_ms.models.presets import build_config, list_presets
from dvt_ms.train.step import ExitLosses, TrainStep
from helpers import GOLDEN_MODELS, as_overrides, converted_golden_model, losses_by_step, run_script

# float16 keeps 11 significant bits (unit roundoff u = 2^-11 = 4.9e-4), and O2 rounds every
# activation to it on its way through the tokenizer, two blocks and a head: the golden logits
# (|z| <= 5) move by a few u·|z|. Measured at O2 on the CPU: 2.1-3.0e-3 (T2T) and 2.2-2.9e-3
# (DeiT); merely rounding the float32 model's weights and images to float16 moves them 1.0-2.4e-3.
# 1e-2 leaves room for kernels that round differently (Ascend, GPU) and is still 0.2-0.5 % of the
# logits; an island lost where float16 breaks gives NaN or inf, not a small error.
FLOAT16_LOGITS_ATOL = 1e-2

# The presets at test size: each keeps its family, qkv bias, LayerNorm eps and MLP ratio; the
# dtype path is the same at any width, depth or resolution (64 px gives T2T grids 2, 3, 4).
REDUCED = dict(embed_dim=64, depth=2, num_heads=2, img_size=64, num_classes=4)
REDUCED_FAMILY = {"t2t": dict(token_dim=16), "deit": dict(patch_grids=[2, 4, 8])}


def reduced_preset(name):
    return dvt_ms.create_model(name, **REDUCED, **REDUCED_FAMILY[build_config(name).family])


def golden_images(golden_dir, family):
    return ms.Tensor(np.load(golden_dir / f"{family}.npz")["images"])


def stressed_golden_model(golden_dir, converted_dir, family):
    """The golden model with activations float16 cannot hold in its float32 islands.

    T2T: every Performer's random features doubled, so exp(t·wᵀ - |t|²/2) reaches |w|²/2 = 16 and
    e^16 = 8.9e6 overflows float16 (65504). DeiT: the last exit's query and key projections
    scaled by 1000, so its attention logits reach about 1e5. (The last exit's relations are not
    reused, so only the attention island is stressed.)"""
    model, _ = converted_golden_model(golden_dir, family, converted_dir)
    for param in model.get_parameters():
        value = param.asnumpy().copy()
        if family == "t2t" and param.name.endswith("random_features"):
            param.set_data(ms.Tensor(value * 2))
        elif family == "deit" and param.name.startswith("stages.2.") and ".attn.qkv." in param.name:
            query_and_key = 2 * value.shape[0] // 3
            value[:query_and_key] *= 1000
            param.set_data(ms.Tensor(value))
    return model


def float16_logits(model, images):
    network = ms.amp.auto_mixed_precision(model, "O2", ms.float16)
    return [logits.asnumpy() for logits in network(images)]


@pytest.mark.parametrize("family", sorted(GOLDEN_MODELS))
def test_golden_logits_at_O2_stay_close_to_float32(golden_dir, converted_dir, family):
    images = golden_images(golden_dir, family)
    model, _ = converted_golden_model(golden_dir, family, converted_dir)
    expected = [logits.asnumpy() for logits in model(images)]
    for exit_index, (low, full) in enumerate(zip(float16_logits(model, images), expected)):
        assert low.dtype == np.float32   # O2 hands float32 logits to the loss
        np.testing.assert_allclose(low, full, rtol=0, atol=FLOAT16_LOGITS_ATOL,
                                   err_msg=f"{family} exit {exit_index + 1}")


@pytest.mark.parametrize("family", sorted(GOLDEN_MODELS))
def test_activations_beyond_float16_range_stay_finite_at_O2(golden_dir, converted_dir, family):
    images = golden_images(golden_dir, family)
    expected = [logits.asnumpy() for logits in stressed_golden_model(golden_dir, converted_dir, family)(images)]
    actual = float16_logits(stressed_golden_model(golden_dir, converted_dir, family), images)
    for exit_index, (low, full) in enumerate(zip(actual, expected)):
        assert np.isfinite(full).all()
        np.testing.assert_allclose(low, full, rtol=0, atol=FLOAT16_LOGITS_ATOL,
                                   err_msg=f"{family} exit {exit_index + 1}")


def mindir_node_dtypes(path):
    """{op name: set of output dtype names} of every node in a MindIR file."""
    model = mind_ir_pb2.ModelProto()
    with open(path, "rb") as handle:
        model.ParseFromString(handle.read())
    names = mind_ir_pb2.TensorProto.DataType
    dtypes = {}
    for node in model.graph.node:
        op = node.op_type.split("::")[-1].split(":")[0]   # "REF::Exp:53" -> "Exp"
        outputs = {names.Name(t.data_type) for a in node.attribute if a.name == "shape" for t in a.tensors}
        dtypes.setdefault(op, set()).update(outputs)
    return dtypes


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(GOLDEN_MODELS))
def test_float16_export_keeps_the_float32_islands(golden_dir, converted_dir, tmp_path, family):
    """Exported at precision float16, the stressed golden model's graphs compute the Performer's
    exp and the attention softmax in float32 (matrix products in float16), stay finite, and equal
    the float16 Cells."""
    images = golden_images(golden_dir, family)
    model = stressed_golden_model(golden_dir, converted_dir, family)
    preprocess = {"img_size": 224, "crop_pct": 0.875, "resize": 256, "interpolation": "bicubic",
                  "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    manifest = export_model(model, tmp_path, GOLDEN_MODELS[family], preprocess, overwrite=True,
                            precision="float16")
    assert manifest["precision"] == "float16"
    cells = [logits.asnumpy().astype(np.float32) for logits in model(images)]   # converted in place
    reused = ()
    for exit_index, info in enumerate(manifest["exits"]):
        dtypes = mindir_node_dtypes(tmp_path / info["file"])
        assert "FLOAT16" in dtypes["MatMul"]
        assert dtypes["Softmax"] == {"FLOAT"}
        if family == "t2t":
            assert dtypes["Exp"] == {"FLOAT"}
        outputs = nn.GraphCell(ms.load(str(tmp_path / info["file"])))(images, *reused)
        assert all(output.dtype == ms.float32 for output in outputs)
        logits = outputs[0].asnumpy()
        assert np.isfinite(logits).all()
        np.testing.assert_array_equal(logits, cells[exit_index])
        reused = tuple(outputs[1:])


# One published preset per family: at test size the presets of a family build the same graph but
# for widths and MLP ratios, so the dtype path is the family's. The device default (O2, float16)
# trains through the Trainer for both families (test_training.py) and through run_train.sh at
# 224 px (below); here the two other paths: O3 (every operator cast, the harshest float16 path) and
# bfloat16 at O2.
FAMILY_PRESETS = {build_config(name).family: name for name in list_presets(published=True)}
PRECISION_CASES = [(name, level, dtype) for name in sorted(FAMILY_PRESETS.values())
                   for level, dtype in (("O3", "float16"), ("O2", "bfloat16"))]


@pytest.mark.slow
@pytest.mark.parametrize("name, level, dtype", PRECISION_CASES)
def test_every_family_compiles_and_trains_in_low_precision(tmp_path, name, level, dtype):
    """One training step graph (forward, backward, loss scale, AdamW) of each family (test size).
    float16 runs two steps on the CPU. The CPU has no bfloat16 kernels, so the bfloat16 step goes
    through MindSpore's front end only (type inference, autodiff, optimizer), by exporting it to
    MindIR: where the T2T float16 graph used to fail, before any device code runs."""
    ms.set_seed(0)
    model = reduced_preset(name)
    network = ms.amp.auto_mixed_precision(model, level, getattr(ms, dtype))
    optimizer = create_optimizer(model, "adamw", lr=1e-3, weight_decay=0.05)
    step = TrainStep(ExitLosses(network, create_loss("CE")), optimizer,
                     "dynamic" if dtype == "float16" else "none", loss_scale=1024.0)
    step.set_train(True)
    rng = np.random.default_rng(0)
    images = ms.Tensor(rng.standard_normal((2, 3, REDUCED["img_size"], REDUCED["img_size"])).astype(np.float32))
    labels = ms.Tensor(np.array([1, 3], np.int32))
    if dtype == "bfloat16":
        ms.export(step, images, labels, file_name=str(tmp_path / "step"), file_format="MINDIR")
        assert (tmp_path / "step.mindir").stat().st_size > 0
        return
    before = model.stages[0].head.weight.asnumpy().copy()
    for _ in range(2):
        losses, applied = step(images, labels)
        assert np.isfinite(losses.asnumpy()).all() and bool(applied.asnumpy())
    assert not np.array_equal(model.stages[0].head.weight.asnumpy(), before)
    assert model.stages[0].head.weight.dtype == ms.float32   # master weights stay float32


@pytest.mark.slow
def test_reported_t2t_command_trains_at_O2(tmp_path, make_class_folders):
    """Issue 12's command: a T2T model on 224 px images with the Ascend/GPU level forced on the CPU,
    with the Ascend/GPU training path around it (dynamic loss scaling, EMA, clipping, validation).
    (The deit family's: test_training.py, test_mixed_precision_with_dynamic_loss_scale.)"""
    make_class_folders(tmp_path / "data" / "train", 4, per_class=2)
    make_class_folders(tmp_path / "data" / "val", 4, per_class=1, seed=1)
    # configs/tiny_cpu.yaml's width and depth (its preset, dvt_tiny, is a deit one)
    settings = dict(model="dvt_t2t_vit_12", embed_dim=64, depth=2, num_heads=2, mlp_ratio=2.0,
                    patch_grids=None, token_dim=16, img_size=224, num_classes=4,
                    batch_size=4, num_workers=1, amp_level="O2", loss_scale_type="dynamic", loss_scale=1024.0,
                    ema=True, clip_grad_norm=1.0, max_steps=2, log_every_steps=1, val_every_epochs=1,
                    progress_bar="never", data_dir=str(tmp_path / "data"), output_dir=str(tmp_path / "out"))
    result = run_script("configs/tiny_cpu.yaml", *as_overrides(settings), timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    losses = losses_by_step(tmp_path / "out")
    assert sorted(losses) == [1, 2] and np.isfinite(list(losses.values())).all()
    saved = ms.load_checkpoint(str(tmp_path / "out" / "step_00000002.ckpt"))
    assert saved["loss_scale"].asnumpy() == 1024.0  # no overflow in 2 steps, 2000 clean steps to grow
    assert saved["stages.0.head.weight"].dtype == ms.float32  # weights stay float32 under O2
    assert any(name.startswith("ema.") for name in saved)
