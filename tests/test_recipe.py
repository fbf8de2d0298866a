"""The published training recipe, exactly: the authors' optimizer, their learning-rate curve, ten
training steps that land on the authors' parameters (golden trajectories from their code), and
the shipped configs against the paper's recipe and docs/training.md's table."""
import math
import pathlib

import mindspore as ms
import numpy as np
import pytest
from mindcv.loss import create_loss
from mindcv.optim.optim_factory import init_group_params

import dvt_ms
from dvt_ms.config import OPTIONS, load_config
from dvt_ms.convert.published import torch_to_mindspore_name
from dvt_ms.train.optim import create_optimizer, learning_rates, weight_decay_groups
from dvt_ms.train.recipe import RECIPE_KEYS, recipe_markdown
from dvt_ms.train.step import ExitLosses, TrainStep
from helpers import GOLDEN_MODELS, REPO, converted_golden_model, golden_overrides

CONFIGS = REPO / "configs"
RECIPE_CONFIGS = sorted(CONFIGS.glob("*_imagenet.yaml")) + sorted(CONFIGS.glob("*_cifar*.yaml"))
# The published config whose recipe each golden trajectory was made with.
GOLDEN_RECIPES = {"deit": "dvt_deit_small_imagenet.yaml", "t2t": "dvt_t2t_vit_12_imagenet.yaml"}

# The paper's recipe (ImageNet, 8 GPUs) and the authors' training script's optimizer and schedule.
PUBLISHED = {
    "common": {
        "num_classes": 1000, "img_size": 224, "drop_path_rate": 0.1, "drop_rate": None, "pretrained": None,
        "opt": "adamw", "opt_betas": (0.9, 0.999), "opt_eps": 1e-8, "weight_decay_filter": "ndim1_and_bias",
        "scheduler": "cosine_decay", "epochs": 300, "warmup_epochs": 20, "warmup_lr": 1e-6, "min_lr": 1e-5,
        "cooldown_epochs": 10, "lr_epoch_stair": True,
        "auto_augment": "randaug-m9-mstd0.5-inc1", "re_prob": 0.25, "mixup": 0.8, "cutmix": 1.0,
        "label_smoothing": 0.1, "ema": True, "ema_decay": 0.99996, "interpolation": "bicubic",
        "scale": (0.08, 1.0), "hflip": 0.5, "crop_pct": 0.875, "clip_grad_norm": None, "amp_level": "auto",
    },
    "dvt_t2t_vit_12_imagenet.yaml": {"model": "dvt_t2t_vit_12", "lr": 2e-3, "weight_decay": 0.03, "batch_size": 128},
    "dvt_t2t_vit_14_imagenet.yaml": {"model": "dvt_t2t_vit_14", "lr": 5e-4, "weight_decay": 0.05, "batch_size": 64},
    "dvt_deit_small_imagenet.yaml": {"model": "dvt_deit_small", "lr": 5e-4, "weight_decay": 0.05, "batch_size": 64},
}


def _config(name, **overrides):
    return load_config(CONFIGS / name, {"data_dir": "unused", **overrides})


def _timm_cosine(config, t):
    """timm 0.3 CosineLRScheduler (t_initial=epochs, cycle_limit 1) at epoch t (fractional per step)."""
    lr, min_lr, warmup_lr = config.lr, config.min_lr, config.warmup_lr
    if t < config.warmup_epochs:
        return warmup_lr + t * (lr - warmup_lr) / config.warmup_epochs
    if t < config.epochs:
        return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * t / config.epochs))
    return min_lr


@pytest.mark.parametrize("name", sorted(name for name in PUBLISHED if name != "common"))
def test_published_learning_rate_curve_is_timms_cosine_over_all_epochs_stepped_per_epoch(name):
    config = _config(name)
    steps_per_epoch = 7
    rates = np.array(learning_rates(config, steps_per_epoch))
    assert len(rates) == (300 + 10) * steps_per_epoch
    per_epoch = rates.reshape(310, steps_per_epoch)
    assert (per_epoch == per_epoch[:, :1]).all()   # one rate per epoch
    np.testing.assert_allclose(per_epoch[:, 0], [_timm_cosine(config, t) for t in range(310)], rtol=1e-12)
    # The warm-up overlaps the cosine: its first epoch is not at the peak; cool-down at min_lr.
    assert per_epoch[0, 0] == pytest.approx(1e-6)
    assert per_epoch[20, 0] == pytest.approx(1e-5 + 0.5 * (config.lr - 1e-5) * (1 + math.cos(math.pi / 15)))
    assert (per_epoch[300:, 0] == config.min_lr).all() and per_epoch[299, 0] > config.min_lr


def test_per_step_learning_rate_curve_advances_a_fraction_of_an_epoch_each_step():
    config = _config("dvt_deit_small_imagenet.yaml", lr_epoch_stair=False)
    steps_per_epoch = 4
    rates = learning_rates(config, steps_per_epoch)
    expected = [_timm_cosine(config, step / steps_per_epoch) for step in range(310 * steps_per_epoch)]
    np.testing.assert_allclose(rates, expected, rtol=1e-12)


def test_constant_schedule_warms_up_then_holds_lr():
    config = _config("dvt_deit_small_imagenet.yaml", scheduler="constant", warmup_epochs=2, epochs=5,
                     cooldown_epochs=1)
    np.testing.assert_allclose(learning_rates(config, 2), [1e-6] * 2 + [2.505e-4] * 2 + [5e-4] * 8, rtol=1e-12)


@pytest.mark.parametrize("family", sorted(GOLDEN_MODELS))
def test_learning_rates_equal_the_authors_scheduler_on_the_golden_schedule(golden_dir, family):
    golden = np.load(golden_dir / f"{family}_trajectory.npz")
    config = _golden_config(golden, family)
    np.testing.assert_allclose(learning_rates(config, 1), golden["learning_rates"], rtol=1e-12)


def _golden_config(golden, family, **overrides):
    """The published config of ``family`` on the golden trajectory's compressed schedule."""
    config = _config(GOLDEN_RECIPES[family], epochs=int(golden["epochs"]), warmup_epochs=int(golden["warmup_epochs"]),
                     cooldown_epochs=int(golden["cooldown_epochs"]), **overrides)
    if overrides:
        return config
    for key in ("lr", "weight_decay", "warmup_lr", "min_lr"):   # the golden was made with the published values
        assert getattr(config, key) == pytest.approx(float(golden[key])), key
    assert config.opt_betas == pytest.approx(tuple(golden["betas"])) and config.opt_eps == float(golden["eps"])
    return config


def _golden_model(golden_dir, family):
    return dvt_ms.create_model(GOLDEN_MODELS[family], **golden_overrides(golden_dir, family))


@pytest.mark.parametrize("family", sorted(GOLDEN_MODELS))
def test_weight_decay_groups_are_the_authors(golden_dir, family):
    """ndim1_and_bias decays exactly what the authors' optimizer decayed (class tokens and DeiT's
    position embeddings included); mindcv's norm_and_bias spares those too."""
    golden = np.load(golden_dir / f"{family}_trajectory.npz")
    model = _golden_model(golden_dir, family)
    names = {param.name for param in model.trainable_params()}
    assert {torch_to_mindspore_name(key, names) for key in golden["trained"]} == names
    authors = {torch_to_mindspore_name(key, names) for key in golden["decayed"]}
    decayed, exempt, order = weight_decay_groups(model, 0.05, "ndim1_and_bias")
    assert {param.name for param in decayed["params"]} == authors
    assert (decayed["weight_decay"], exempt["weight_decay"]) == (0.05, 0.0)
    assert [param.name for param in order["order_params"]] == [param.name for param in model.trainable_params()]
    spared_by_mindcv = authors - {param.name for param in weight_decay_groups(model, 0.05, "norm_and_bias")[0]["params"]}
    assert spared_by_mindcv and all(name.endswith(("cls_token", "pos_embed")) for name in spared_by_mindcv)


def test_norm_and_bias_groups_equal_mindcvs_own_filter(golden_dir):
    model = _golden_model(golden_dir, "deit")
    ours = weight_decay_groups(model, 0.05, "norm_and_bias")
    mindcv = init_group_params(model.trainable_params(), 0.05, "norm_and_bias", model.no_weight_decay())
    for our_group, mindcv_group in zip(ours[:2], mindcv[:2]):
        assert [p.name for p in our_group["params"]] == [p.name for p in mindcv_group["params"]]
        assert our_group["weight_decay"] == mindcv_group["weight_decay"]


@pytest.mark.parametrize("opt", OPTIONS["opt"].choices)
def test_every_optimizer_decays_exactly_the_filtered_groups(golden_dir, opt):
    model = _golden_model(golden_dir, "deit")
    config = _config("dvt_deit_small_imagenet.yaml", opt=opt)
    optimizer = create_optimizer(model, config, learning_rates(config, 1))
    decayed = {param.name for param in weight_decay_groups(model, 0.05, "ndim1_and_bias")[0]["params"]}
    assert [param.name for param in optimizer.parameters] == [param.name for param in model.trainable_params()]
    flags = {param.name: bool(flag) for param, flag in zip(optimizer.parameters, optimizer.decay_flags)}
    assert {name for name, flag in flags.items() if flag} == decayed
    if opt == "adamw":
        assert (float(optimizer.beta1[0]), float(optimizer.beta2[0])) == pytest.approx((0.9, 0.999))
        assert float(optimizer.eps[0]) == pytest.approx(1e-8)


def _zero_gradient_entries(name, shape, config):
    """Entries whose exact gradient is zero in the published architecture (both frameworks turn their
    rounding noise into Adam steps, so they are compared apart): in the last exit, whose attention
    logits are not handed on, the key biases (a constant per softmax row) and the relation-reuse
    output bias (a constant per map); in its last block, whose patch tokens reach no output, the
    feature-reuse branch (the class token's reused feature is zero)."""
    last = f"stages.{config.num_exits - 1}."
    mask = np.zeros(shape, bool)
    if name == last + "relation_reuse.reduce.bias" or name.startswith(f"{last}blocks.{config.depth - 1}.feature_reuse."):
        mask[...] = True
    elif name.startswith(last + "blocks.") and name.endswith(".attn.qkv.bias"):
        mask[config.embed_dim:2 * config.embed_dim] = True   # q, k, v
    return mask


def trajectory_errors(golden_dir, family, work_dir, **config_overrides):
    """Run the golden trajectory through our optimizer construction and train step; returns the
    relative L2 difference of the parameter change from the authors' per exit (zero-gradient entries
    apart, and all entries), per trainable tensor, and our exit losses per step."""
    golden = np.load(golden_dir / f"{family}_trajectory.npz")
    config = _golden_config(golden, family, **config_overrides)
    model, _ = converted_golden_model(golden_dir, family, work_dir)
    optimizer = create_optimizer(model, config, learning_rates(config, 1))
    step = TrainStep(ExitLosses(model, create_loss("CE")), optimizer)
    step.set_train(False)   # eval mode: no dropout (the T2T Performers' is hard-coded), no drop path
    images = ms.Tensor(np.load(golden_dir / f"{family}.npz")["images"])
    labels = ms.Tensor(golden["labels"].astype(np.int32))
    before = {param.name: param.asnumpy().copy() for param in model.trainable_params()}
    losses = [step(images, labels)[0].asnumpy() for _ in golden["learning_rates"]]
    ours = {param.name: param.asnumpy() - before[param.name] for param in model.trainable_params()}
    theirs = {torch_to_mindspore_name(key[len("delta/"):], ours): golden[key]
              for key in golden.files if key.startswith("delta/")}
    assert set(theirs) == set(ours)

    arch = model.config
    per_exit, per_exit_all, per_tensor = [], [], {}
    for stage in range(arch.num_exits):
        names = [name for name in ours if name.startswith(f"stages.{stage}.")]
        kept = {name: ~_zero_gradient_entries(name, ours[name].shape, arch) for name in names}
        for name in names:
            if kept[name].any():
                per_tensor[name] = (np.linalg.norm((ours[name] - theirs[name])[kept[name]])
                                    / np.linalg.norm(theirs[name][kept[name]]))

        def relative(selection):
            difference = sum(np.sum(((ours[n] - theirs[n])[selection(n)]) ** 2) for n in names)
            return float(np.sqrt(difference / sum(np.sum(theirs[n][selection(n)] ** 2) for n in names)))
        per_exit.append(relative(lambda name: kept[name]))
        per_exit_all.append(relative(lambda name: Ellipsis))
    return {"per_exit": per_exit, "per_exit_all": per_exit_all, "per_tensor": per_tensor,
            "losses": np.array(losses), "golden_losses": golden["exit_losses"]}


# Measured (DeiT / T2T): per exit 1.7e-5-2.0e-5 / 0.9e-5-1.1e-5, per tensor at most 7e-5 / 4e-5.
# With the previous filter (mindcv's norm_and_bias) per exit 1.5e-4-3.6e-4 / 4.6e-5-5.7e-5 and the
# class tokens and position embeddings 1.2e-3-3.5e-3 apart (the per-tensor bound catches both
# families); with eps 1e-10 instead of 1e-8, per exit up to 2.2e-4 / 3.5e-4.
EXIT_TOLERANCE = 1e-4
TENSOR_TOLERANCE = 5e-4


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(GOLDEN_MODELS))
def test_ten_adamw_steps_land_on_the_authors_parameters(golden_dir, converted_dir, family):
    """Ten steps of the published AdamW over the golden schedule (warm-up, cosine, cool-down) from
    the golden checkpoint, on the golden images: every exit's parameter change is the authors' to
    1e-4 (relative L2), every trainable tensor's to 5e-4, and the losses follow theirs."""
    errors = trajectory_errors(golden_dir, family, converted_dir)
    assert max(errors["per_exit"]) < EXIT_TOLERANCE, errors["per_exit"]
    worst = max(errors["per_tensor"], key=errors["per_tensor"].get)
    assert errors["per_tensor"][worst] < TENSOR_TOLERANCE, (worst, errors["per_tensor"][worst])
    np.testing.assert_allclose(errors["losses"], errors["golden_losses"], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("path", RECIPE_CONFIGS, ids=lambda path: path.stem)
def test_published_configs_hold_the_authors_optimizer(path):
    config = load_config(path, {"data_dir": "unused"})
    assert (config.opt, config.opt_betas, config.opt_eps) == ("adamw", (0.9, 0.999), 1e-8)
    assert (config.weight_decay_filter, config.lr_epoch_stair) == ("ndim1_and_bias", True)


@pytest.mark.parametrize("name", sorted(name for name in PUBLISHED if name != "common"))
def test_imagenet_configs_hold_the_papers_recipe(name):
    config = load_config(CONFIGS / name, {"data_dir": "unused"}).as_dict()
    expected = {**PUBLISHED["common"], **PUBLISHED[name]}
    assert set(expected) <= set(RECIPE_KEYS) | {"model"}
    assert {key: config[key] for key in expected} == expected


def test_training_doc_holds_the_recipe_table_generated_from_the_configs():
    doc = (REPO / "docs" / "training.md").read_text()
    table = doc.split("<!-- recipe:start -->\n")[1].split("<!-- recipe:end -->")[0]
    command = "python -m dvt_ms.train.recipe " + " ".join(f"configs/{path.name}" for path in RECIPE_CONFIGS)
    assert table == recipe_markdown(RECIPE_CONFIGS), f"regenerate docs/training.md's recipe table: {command}"
