"""The model against the authors' code (golden logits), the invariants of docs/model.md, and training."""
import json
import subprocess
import sys

import numpy as np
import mindspore as ms
import mindcv
import pytest
from mindspore import nn, ops

import dvt_ms
from dvt_ms.models.presets import list_presets, patch_geometry
from dvt_ms.models.resample import grid_resample_matrix, resample_matrix
from dvt_ms.models.tokenizers import PERFORMER_DROPOUT, TokenPerformer
from helpers import REPO, converted_golden_model, golden_overrides, GOLDEN_MODELS


@pytest.mark.parametrize("family", sorted(GOLDEN_MODELS))
def test_converted_golden_checkpoint_reproduces_all_exits(golden_dir, converted_dir, family):
    model, _ = converted_golden_model(golden_dir, family, converted_dir)
    golden = np.load(golden_dir / f"{family}.npz")
    logits = model(ms.Tensor(golden["images"]))
    assert len(logits) == 3
    for exit_index, exit_logits in enumerate(logits):
        expected = golden[f"logits_exit{exit_index}"]
        np.testing.assert_allclose(exit_logits.asnumpy(), expected, rtol=0, atol=1e-4,
                                   err_msg=f"{family} exit {exit_index + 1}")


@pytest.mark.parametrize("family", sorted(GOLDEN_MODELS))
def test_stage_by_stage_equals_cascade(golden_dir, converted_dir, family):
    model, _ = converted_golden_model(golden_dir, family, converted_dir)
    images = ms.Tensor(np.load(golden_dir / f"{family}.npz")["images"])
    cascade = model(images)
    feature = relations = None
    for exit_index, stage in enumerate(model.stages):
        logits, feature, relations = stage(images, feature, relations)
        np.testing.assert_allclose(logits.asnumpy(), cascade[exit_index].asnumpy(), atol=1e-6)
        grid = model.config.grids[exit_index]
        config = model.config
        assert feature.shape == (2, 1 + grid * grid, config.embed_dim)
        assert relations.shape == (2, config.num_heads * config.depth, 1 + grid * grid, 1 + grid * grid)


@pytest.mark.parametrize("path", ["feature", "relation"])
def test_reuse_switch_decides_whether_previous_stage_matters(golden_dir, converted_dir, path):
    """With a reuse path on, exit 2 depends on exit 1's tensor for it; switched off, it does not."""
    images = ms.Tensor(np.load(golden_dir / "deit.npz")["images"])
    with_reuse, _ = converted_golden_model(golden_dir, "deit", converted_dir)
    without_reuse = dvt_ms.create_model("dvt_deit_small", **golden_overrides(golden_dir, "deit"),
                                        **{f"{path}_reuse": False})
    without_reuse.set_train(False)
    rng = np.random.default_rng(0)
    for model, enabled in ((with_reuse, True), (without_reuse, False)):
        _, feature, relations = model.stages[0](images)
        baseline = model.stages[1](images, feature, relations)[0].asnumpy()
        # an additive perturbation: scaling would be undone by the feature path's LayerNorm
        if path == "feature":
            feature = feature + ms.Tensor(rng.standard_normal(feature.shape).astype(np.float32))
        else:
            relations = relations + ms.Tensor(rng.standard_normal(relations.shape).astype(np.float32))
        perturbed = model.stages[1](images, feature, relations)[0].asnumpy()
        changed = np.abs(perturbed - baseline).max()
        if enabled:
            assert changed > 1e-3, f"{path} reuse on, yet exit 2 ignores exit 1's {path}"
        else:
            assert changed == 0.0, f"{path} reuse off, yet exit 2 reads exit 1's {path}"


def test_relation_reuse_off_changes_the_golden_logits(golden_dir, converted_dir):
    """Loading the golden weights without the relation-reuse path keeps exit 1 and changes exits 2-3."""
    _, ckpt = converted_golden_model(golden_dir, "t2t", converted_dir)
    model = dvt_ms.create_model(GOLDEN_MODELS["t2t"], **golden_overrides(golden_dir, "t2t"), relation_reuse=False)
    weights = {k: v for k, v in ms.load_checkpoint(str(ckpt)).items() if ".relation_reuse." not in k}
    not_loaded, _ = ms.load_param_into_net(model, weights, strict_load=True)
    assert not not_loaded
    model.set_train(False)
    golden = np.load(golden_dir / "t2t.npz")
    logits = [t.asnumpy() for t in model(ms.Tensor(golden["images"]))]
    np.testing.assert_allclose(logits[0], golden["logits_exit0"], atol=1e-4)
    for exit_index in (1, 2):
        assert np.abs(logits[exit_index] - golden[f"logits_exit{exit_index}"]).max() > 1e-3


def _reference_resample(grid, dst):
    """Materialise what the published code does: nearest upsample then adaptive average pool."""
    src = grid.shape[0]
    up = src * -(-dst // src)
    upsampled = grid[np.arange(up) * src // up][:, np.arange(up) * src // up]
    out = np.empty((dst, dst))
    for i in range(dst):
        for j in range(dst):
            rows = slice(i * up // dst, -(-(i + 1) * up // dst))
            cols = slice(j * up // dst, -(-(j + 1) * up // dst))
            out[i, j] = upsampled[rows, cols].mean()
    return out


@pytest.mark.parametrize("src,dst", [(7, 10), (10, 14), (4, 6), (6, 8), (3, 7)])
def test_grid_resampling_is_the_published_upsample_then_pool(src, dst):
    rng = np.random.default_rng(src * dst)
    grids = rng.standard_normal((5, src, src))
    matrix = resample_matrix(src, dst)
    np.testing.assert_allclose(matrix.sum(axis=1), 1.0, atol=1e-6)
    expected = np.stack([_reference_resample(g, dst) for g in grids])
    # the one map M ⊗ M on row-major flattened grids (relation reuse applies it to the key axis)
    got_last = grids.reshape(5, src * src) @ grid_resample_matrix(src, dst).T
    np.testing.assert_allclose(got_last.reshape(5, dst, dst), expected, atol=1e-5)


def test_patch_geometry_gives_the_published_deit_patches():
    assert [patch_geometry(224, g) for g in (7, 10, 14)] == [(32, 32, 0), (23, 23, 3), (16, 16, 0)]


# Elements of the authors' published state dicts (summed over their tensors; docs/model.md, "Presets").
PUBLISHED_STATE_DICT_ELEMENTS = {
    "dvt_t2t_vit_12": 22_461_516,
    "dvt_t2t_vit_14": 67_881_836,
    "dvt_deit_small": 70_442_232,
}


def test_the_published_presets_are_those_with_published_checkpoints():
    assert list_presets(published=True) == sorted(PUBLISHED_STATE_DICT_ELEMENTS)


@pytest.mark.parametrize("name", sorted(PUBLISHED_STATE_DICT_ELEMENTS))
def test_full_presets_have_the_published_state_dict_size(name):
    model = mindcv.create_model(name)    # through mindcv's registry
    assert isinstance(model, dvt_ms.DVT)
    total = sum(int(np.prod(p.shape)) for p in model.get_parameters())
    assert total == PUBLISHED_STATE_DICT_ELEMENTS[name]
    assert model.config.grids == (7, 10, 14)


def test_overrides_reach_the_model():
    model = dvt_ms.create_model("dvt_deit_small", num_classes=7, embed_dim=32, depth=1, num_heads=2,
                                mlp_ratio=1.0, img_size=64, patch_grids=[4, 6, 8], drop_path_rate=0.1)
    assert model.config.grids == (4, 6, 8)
    assert model.stages[2].head.weight.shape == (7, 32)
    with pytest.raises(ValueError, match="unknown key 'embed_dimm'; did you mean 'embed_dim'"):
        dvt_ms.create_model("dvt_deit_small", embed_dimm=32)
    with pytest.raises(ValueError, match="unknown model"):
        dvt_ms.create_model("dvt_vit_huge")


class _SumOfExitLosses(nn.Cell):
    def __init__(self, model):
        super().__init__(auto_prefix=False)   # keep the model's parameter names
        self.model = model
        self.loss = nn.CrossEntropyLoss()

    def construct(self, images, labels):
        total = 0.0
        for logits in self.model(images):
            total = total + self.loss(logits, labels)
        return total


def test_one_graph_mode_training_step_updates_every_stage():
    ms.set_seed(0)
    # depth 2: with one block, the reused feature (zero at the class token) cannot reach the head
    model = dvt_ms.create_model("dvt_t2t_vit_12", embed_dim=32, depth=2, num_heads=2, mlp_ratio=1.0,
                                token_dim=8, num_classes=5, drop_path_rate=0.1)
    trainable = model.trainable_params()
    frozen = {p.name for p in model.get_parameters()} - {p.name for p in trainable}
    assert frozen and all(("random_features" in n) or n.endswith("pos_embed") for n in frozen)
    before = {p.name: p.asnumpy().copy() for p in model.get_parameters()}
    step = nn.TrainOneStepCell(_SumOfExitLosses(model), nn.AdamWeightDecay(trainable, learning_rate=1e-3))
    step.set_train(True)
    rng = np.random.default_rng(0)
    images = ms.Tensor(rng.standard_normal((2, 3, 224, 224)).astype(np.float32))
    labels = ms.Tensor(np.array([1, 3], dtype=np.int32))
    loss = float(step(images, labels).asnumpy())
    assert np.isfinite(loss) and loss > 3 * np.log(5) * 0.5
    after = {p.name: p.asnumpy() for p in model.get_parameters()}
    for stage in range(3):
        changed = [n for n in before if n.startswith(f"stages.{stage}.") and not np.array_equal(before[n], after[n])]
        assert any(".head." in n for n in changed) and any(".blocks." in n for n in changed)
    for name in frozen:
        np.testing.assert_array_equal(before[name], after[name])
    assert any(not np.array_equal(before[n], after[n]) for n in before if ".relation_reuse." in n)
    assert any(not np.array_equal(before[n], after[n]) for n in before if ".feature_reuse." in n)


def _weights(model):
    return {param.name: param.asnumpy() for param in model.get_parameters()}


@pytest.mark.parametrize("family", sorted(GOLDEN_MODELS))
def test_every_parameter_is_a_function_of_the_seed(golden_dir, family):
    """Two builds after the same mindspore.set_seed are identical, trained and fixed parameters
    alike; another seed changes every random one (the Performers' random features included)."""
    overrides = golden_overrides(golden_dir, family)
    builds = []
    for seed in (0, 0, 1):
        ms.set_seed(seed)
        builds.append(_weights(dvt_ms.create_model(GOLDEN_MODELS[family], **overrides)))
    first, again, other_seed = builds
    for name, value in first.items():
        np.testing.assert_array_equal(again[name], value, err_msg=name)
    random = [name for name, value in first.items() if value.std() > 0 and not name.endswith("pos_embed")]
    assert all(not np.array_equal(other_seed[name], first[name]) for name in random)
    if family == "t2t":
        assert sum(name.endswith("random_features") for name in random) == 6


_BUILD_IN_A_NEW_PROCESS = """
import json, sys
import mindspore as ms, numpy as np
import dvt_ms
ms.set_seed(0)
model = dvt_ms.create_model(sys.argv[1], **json.loads(sys.argv[2]))
np.savez(sys.argv[3], **{param.name: param.asnumpy() for param in model.get_parameters()})
"""


def test_processes_seeded_alike_build_identical_t2t_models(golden_dir, tmp_path):
    """What every data-parallel rank does: a fresh process, the same seed, the same weights."""
    overrides = golden_overrides(golden_dir, "t2t")
    saved = tmp_path / "weights.npz"
    subprocess.run([sys.executable, "-c", _BUILD_IN_A_NEW_PROCESS, GOLDEN_MODELS["t2t"], json.dumps(overrides),
                    str(saved)], check=True, cwd=REPO, capture_output=True, timeout=300)
    ms.set_seed(0)
    here = _weights(dvt_ms.create_model(GOLDEN_MODELS["t2t"], **overrides))
    there = np.load(saved)
    assert sorted(there.files) == sorted(here)
    for name, value in here.items():
        np.testing.assert_array_equal(there[name], value, err_msg=name)


def test_performer_random_features_are_orthogonal_rows_of_norm_sqrt_m():
    performer = TokenPerformer(in_dim=12, dim=16)   # m = 8 features
    features = performer.random_features.asnumpy().astype(np.float64)
    assert features.shape == (8, 16)
    np.testing.assert_allclose(features @ features.T, 8 * np.eye(8), atol=1e-5)


@pytest.mark.parametrize("site", ["proj", "mlp"])
def test_performer_dropout_acts_in_training_only(site):
    """The published Performer drops its attention projection's and its MLP's outputs with
    probability 0.1 in training (whatever drop_rate): each element is either dropped or scaled by
    1/0.9. In evaluation it is the identity and the output deterministic."""
    ms.set_seed(0)
    performer = TokenPerformer(in_dim=24, dim=16)
    # Silence the other site: the output is then value + (dropout of) this site's output.
    silenced = performer.mlp.fc2 if site == "proj" else performer.proj
    for param in silenced.get_parameters():
        param.set_data(ms.Tensor(np.zeros(param.shape, np.float32)))
    x = ms.Tensor(np.random.default_rng(0).standard_normal((4, 256, 24)).astype(np.float32))
    value = ops.split(performer.kqv(performer.norm1(x)), 16, axis=-1)[2].asnumpy()
    performer.set_train(False)
    evaluated = performer(x).asnumpy()
    np.testing.assert_array_equal(performer(x).asnumpy(), evaluated)
    performer.set_train(True)
    trained = performer(x).asnumpy()
    site_eval, site_train = evaluated - value, trained - value
    clear = np.abs(site_eval) > 1e-3
    dropped = np.isclose(site_train, 0.0, atol=1e-5)
    kept = np.isclose(site_train, site_eval / (1 - PERFORMER_DROPOUT), rtol=1e-3, atol=1e-5)
    assert np.all(dropped | kept)
    assert PERFORMER_DROPOUT == 0.1
    assert 0.08 < dropped[clear].mean() < 0.12   # 16384 elements: the standard deviation is 0.0023
