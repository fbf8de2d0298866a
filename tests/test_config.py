"""Config schema: every shipped config loads; bad keys, types and values are errors that say what is wrong."""
import pathlib

import pytest

from dvt_ms.config import OPTIONS, SCHEMA, ConfigError, load_config, model_overrides, schema_markdown
from dvt_ms.models.presets import OVERRIDABLE_KEYS, build_config, patch_geometry

CONFIGS = sorted((pathlib.Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
REQUIRED = {"data_dir": "/data"}


def _error(overrides):
    with pytest.raises(ConfigError) as raised:
        load_config(overrides={**REQUIRED, **overrides})
    return str(raised.value)


def test_every_shipped_config_is_valid():
    names = {path.name for path in CONFIGS}
    assert {"tiny_cpu.yaml", "dvt_t2t_vit_12_imagenet.yaml", "dvt_t2t_vit_14_imagenet.yaml",
            "dvt_deit_small_imagenet.yaml", "dvt_t2t_vit_12_cifar10.yaml", "dvt_t2t_vit_12_cifar100.yaml"} <= names
    for path in CONFIGS:
        load_config(path)


def test_defaults_and_overrides():
    config = load_config(overrides={**REQUIRED, "lr": "1e-3", "patch_grids": [4, 6, 8], "model": "dvt_deit_small"})
    assert config.lr == 1e-3  # YAML 1.1 reads 1e-3 as a string; it is still a number
    assert config.patch_grids == (4, 6, 8)
    assert model_overrides(config) == {"patch_grids": (4, 6, 8)}
    assert config.batch_size == OPTIONS["batch_size"].default


def test_yaml_file_then_command_line(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("data_dir: /data\nlr: 0.01\nepochs: 5\nwarmup_epochs: 1\n")
    config = load_config(path, {"epochs": 7})
    assert (config.lr, config.epochs) == (0.01, 7)


def test_unknown_key_suggests_nearest(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("data_dir: /data\nlearning_rat: 0.1\nwarmup_epoch: 3\n")
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    message = str(raised.value)
    assert str(path) in message
    assert "'warmup_epoch'" in message and "did you mean 'warmup_epochs'" in message
    assert "'learning_rat'" in message


@pytest.mark.parametrize("overrides, expected", [
    ({"batch_size": "64"}, "batch_size must be an integer, got '64' (str)"),
    ({"batch_size": 0}, "batch_size must be >= 1, got 0"),
    ({"ema": "yes"}, "ema must be true or false"),
    ({"lr": "fast"}, "lr must be a number, got 'fast'"),
    ({"hflip": 1.5}, "hflip must be <= 1.0, got 1.5"),
    ({"scale": [0.9, 0.1]}, "scale must be [low, high] with low <= high"),
    ({"opt": "adamm"}, "opt must be one of adamw"),
    ({"model": "dvt_vit_huge"}, "model must be one of"),
    ({"patch_grids": [4, "six"]}, "patch_grids must be a non-empty list of integers"),
    ({"epochs": None}, "epochs must be set"),
    ({"warmup_epochs": 30, "epochs": 10}, "warmup_epochs (30) exceeds epochs (10)"),
    ({"model": "dvt_deit_small", "embed_dim": 100}, "embed_dim 100 is not divisible by num_heads 6"),
    ({"model": "dvt_deit_small", "patch_grids": [8, 4, 14]}, "must strictly increase"),
    ({"batch_size": 63}, "batch_size must be even when mixup/cutmix is on"),
    ({"dataset": "cifar10", "val_split": "val"}, "val_split must be train or test for cifar10, got 'val'"),
    ({"auto_augment": "randomaug"}, "auto_augment 'randomaug' is not a mindcv policy"),
])
def test_bad_values_name_key_and_value(overrides, expected):
    assert expected in _error(overrides)


def test_data_dir_is_required():
    with pytest.raises(ConfigError, match="data_dir must be set"):
        load_config(overrides={})


@pytest.mark.parametrize("command", ["export", "calibrate"])
def test_export_and_calibrate_check_only_the_keys_they_use(command):
    """No dataset root, training schedule or mixup batch rule for a command that does not train."""
    config = load_config(overrides={"batch_size": 63, "warmup_epochs": 400, "min_lr": 1.0}, command=command)
    assert config.data_dir is None and config.batch_size == 63
    message = _error({"batch_size": 63, "warmup_epochs": 400, "min_lr": 1.0, "data_dir": None})
    for rule in ("data_dir must be set", "batch_size must be even", "warmup_epochs (400) exceeds epochs",
                 "min_lr (1.0) exceeds lr"):
        assert rule in message


@pytest.mark.parametrize("command", ["train", "calibrate", "export"])
def test_every_command_refuses_an_impossible_model(command):
    with pytest.raises(ConfigError, match="embed_dim 100 is not divisible by num_heads 6"):
        load_config(overrides={**REQUIRED, "model": "dvt_deit_small", "embed_dim": 100}, command=command)


def test_the_config_carries_its_model_built_once_from_the_preset_and_the_model_keys():
    config = load_config(overrides={**REQUIRED, "model": "dvt_deit_small", "embed_dim": 32, "num_heads": 2,
                                    "patch_grids": [2, 4, 8], "img_size": 32})
    assert config.arch == build_config("dvt_deit_small", embed_dim=32, num_heads=2, patch_grids=(2, 4, 8),
                                       img_size=32)
    assert config.arch.depth == build_config("dvt_deit_small").depth   # unset keys keep the preset's value
    assert "arch" not in config.as_dict() and load_config(overrides=config.as_dict()).arch == config.arch


def test_all_errors_reported_at_once():
    message = _error({"batch_size": -1, "lr": "x", "epoch": 3})
    assert "batch_size" in message and "lr" in message and "did you mean 'epochs'" in message


def test_unreadable_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "list.yaml"
    bad.write_text("- lr\n- 0.1\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(bad)


def test_schema_covers_every_model_field_and_renders():
    names = [option.name for option in SCHEMA]
    assert len(names) == len(set(names))
    assert set(OVERRIDABLE_KEYS) <= set(names)
    assert all(option.doc for option in SCHEMA)
    assert not any(option.doc.startswith("architecture override") for option in SCHEMA), \
        "a DVTConfig field has no doc line in dvt_ms/config.py"
    table = schema_markdown()
    assert table.startswith("| key | type | default | meaning |")
    for name in names:
        assert f"| `{name}` |" in table


def test_the_configuration_page_lists_every_config_key_as_the_schema_says():
    """docs/configuration.md's key table is generated from the schema; regenerate it when the schema changes."""
    page = (pathlib.Path(__file__).resolve().parents[1] / "docs" / "configuration.md").read_text()
    table = page.split("<!-- config-keys:start -->")[1].split("<!-- config-keys:end -->")[0]
    assert table.strip() == schema_markdown().strip()


@pytest.mark.parametrize("typo, meant", [("lerning_rate", "lr"), ("learning_rate", "lr"), ("base_lr", "lr"),
                                         ("num_epochs", "epochs"), ("batchsize", "batch_size"),
                                         ("warmup_epoch", "warmup_epochs"), ("weight_decy", "weight_decay")])
def test_unknown_keys_suggest_the_key_meant_also_under_other_trainers_names(typo, meant):
    assert f"unknown key {typo!r}; did you mean {meant!r}?" in _error({typo: 1})


@pytest.mark.parametrize("overrides, expected", [
    ({"patch_grids": [2, 4, 64]}, "patch_grids: a 64x64 token grid does not fit 32 px images (1 px patches with "
                                  "16 px of padding per side"),
    ({"patch_grids": [0, 4, 8]}, "patch_grids must be positive"),
    ({"img_size": 224, "patch_grids": [7, 10, 100]}, "a 100x100 token grid does not fit 224 px images"),
    ({"model": "dvt_t2t_vit_12"}, "patch_grids is for deit models; the token grids of dvt_t2t_vit_12 follow "
                                  "from img_size"),
    ({"model": "dvt_t2t_vit_12", "patch_grids": None}, "img_size 32 is too small for the t2t tokenizers"),
])
def test_impossible_token_grids_are_refused_naming_the_key(overrides, expected):
    base = {"model": "dvt_deit_small", "img_size": 32, "patch_grids": [2, 4, 8]}
    assert expected in _error({**base, **overrides})


def _covers_pixels(img_size, grid, kernel, padding):
    """Every patch of the padded image holds at least one image pixel."""
    return all(min(img_size, (i + 1) * kernel - padding) > max(0, i * kernel - padding) for i in range(grid))


@pytest.mark.parametrize("img_size", [32, 64, 224])
def test_patch_grids_are_accepted_exactly_when_every_patch_holds_image_pixels(img_size):
    for grid in range(1, img_size + 8):
        kernel = -(-img_size // grid)
        padding = -(-(kernel * grid - img_size) // 2)
        fits = _covers_pixels(img_size, grid, kernel, padding) and \
            (img_size + 2 * padding - kernel) // kernel + 1 == grid
        if fits:
            assert patch_geometry(img_size, grid) == (kernel, kernel, padding)
        else:
            with pytest.raises(ConfigError, match=f"patch_grids: a {grid}x{grid} token grid"):
                patch_geometry(img_size, grid)


def test_smallest_t2t_img_size_named_is_the_smallest_that_builds():
    message = _error({"model": "dvt_t2t_vit_12", "patch_grids": None, "img_size": 20})
    smallest = int(message.split("use img_size >= ")[1].split()[0])
    build_config("dvt_t2t_vit_12", img_size=smallest)
    with pytest.raises(ConfigError):
        build_config("dvt_t2t_vit_12", img_size=smallest - 1)
