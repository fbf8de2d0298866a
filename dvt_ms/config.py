"""The run configuration shared by train, calibrate and export: one schema, flat mindcv-style
YAML keys, validated on load.

``SCHEMA`` is the single source of truth: every key with its type, default and a one-line doc.
``load_config`` reads a YAML file plus ``key=value`` overrides and rejects unknown keys (suggesting
the nearest valid one), wrong types and impossible values, naming the key, the value and where it
came from. ``schema_markdown`` renders the schema as the README's table.

Model keys are the fields of ``dvt_ms.models.DVTConfig``: ``null`` means "the preset's value".
"""
import dataclasses
import difflib
import typing

import yaml

from .errors import ConfigError
from .models.presets import FIELD_TYPES, OVERRIDABLE_KEYS, PRESETS, build_config
from .shipped_configs import config_path

__all__ = ["Option", "SCHEMA", "ALIASES", "TrainConfig", "load_config", "model_overrides", "schema_markdown",
           "suggest_key"]


@dataclasses.dataclass(frozen=True)
class Option:
    name: str
    kind: str              # bool | int | float | str | ints (list of ints) | strs (list of str) | pair (two floats)
    default: typing.Any
    doc: str
    section: str
    nullable: bool = False
    choices: tuple = ()
    minimum: typing.Optional[float] = None   # inclusive
    maximum: typing.Optional[float] = None   # inclusive
    below: typing.Optional[float] = None     # exclusive upper bound


# One line per DVTConfig field; the type comes from the dataclass, the value check from its __post_init__.
_MODEL_DOCS = {
    "embed_dim": "token width D",
    "depth": "transformer blocks per exit",
    "num_heads": "attention heads",
    "mlp_ratio": "MLP hidden width / D",
    "qkv_bias": "bias in the qkv projection",
    "layernorm_eps": "LayerNorm epsilon",
    "num_classes": "classes; must match the dataset (heads are re-initialised when it differs from `pretrained`)",
    "img_size": "input resolution (train crop and eval crop)",
    "patch_grids": "deit only: token grid side of each exit, e.g. [7, 10, 14]",
    "token_dim": "t2t only: width of the Tokens-to-Token Performers",
    "feature_reuse": "exits > 1 reuse the previous exit's features",
    "relation_reuse": "exits > 1 reuse the previous exit's attention logits",
    "drop_rate": "dropout on the position-embedded tokens, the attention projections and the MLPs "
                 "(0 in the published recipe)",
    "drop_path_rate": "stochastic depth, linear over depth (published recipe: 0.1)",
}
_KIND_NAMES = {"ints": "list of int", "strs": "list of str", "pair": "[float, float]"}
_FIELD_KINDS = {int: "int", float: "float", bool: "bool", tuple: "ints"}


def _model_options():
    return [Option(name, _FIELD_KINDS[FIELD_TYPES[name]], None,
                   _MODEL_DOCS.get(name, "architecture override (see dvt_ms.models.DVTConfig)"),
                   "model", nullable=True)
            for name in OVERRIDABLE_KEYS]


SCHEMA = (
    Option("model", "str", "dvt_t2t_vit_12", "preset name", "model", choices=tuple(sorted(PRESETS))),
    *_model_options(),
    Option("pretrained", "str", None, "converted published checkpoint (.ckpt) to start from", "model",
           nullable=True),

    Option("dataset", "str", "imagenet", "imagenet = ImageNet-style class folders; cifar10/cifar100 = "
           "the binary batches", "data", choices=("imagenet", "cifar10", "cifar100")),
    Option("data_dir", "str", None, "dataset root (holds the split folders or the CIFAR .bin files)",
           "data", nullable=True),
    Option("train_split", "str", "train", "training split (folder name; CIFAR: train)", "data"),
    Option("val_split", "str", "val", "validation split (folder name; CIFAR: test)", "data"),
    Option("class_names", "strs", None, "class names in label order; null = the sorted class folders of "
           "train_split. Every split's folders map to labels by these names; training records the list in "
           "the run's config.yaml", "data", nullable=True),
    Option("verify_images", "bool", True, "decode every image once (results cached in output_dir/image_check, "
           "shared by all ranks) and leave out unreadable ones, naming each", "data"),
    Option("holdout_per_class", "int", 0, "images per class kept out of training (drawn by seed, recorded in "
           "output_dir/holdout.json); calibration then uses exactly those", "data", minimum=0),
    Option("batch_size", "int", 64, "images per device per step", "data", minimum=1),
    Option("num_workers", "int", 4, "data pipeline workers per device", "data", minimum=1),

    Option("interpolation", "str", "bicubic", "resize interpolation (train and eval)", "augmentation",
           choices=("bilinear", "bicubic", "nearest", "area")),
    Option("scale", "pair", (0.08, 1.0), "RandomResizedCrop area range", "augmentation",
           minimum=0.0, maximum=1.0),
    Option("ratio", "pair", (0.75, 1.333), "RandomResizedCrop aspect-ratio range", "augmentation",
           minimum=0.0),
    Option("hflip", "float", 0.5, "horizontal flip probability", "augmentation", minimum=0.0, maximum=1.0),
    Option("auto_augment", "str", "randaug-m9-mstd0.5-inc1", "mindcv auto-augment policy "
           "(randaug-..., autoaug, trivialaugwide, augmix) or null", "augmentation", nullable=True),
    Option("re_prob", "float", 0.25, "random erasing probability", "augmentation", minimum=0.0, maximum=1.0),
    Option("mixup", "float", 0.8, "mixup alpha (0 = off)", "augmentation", minimum=0.0),
    Option("cutmix", "float", 1.0, "cutmix alpha (0 = off)", "augmentation", minimum=0.0),
    Option("cutmix_prob", "float", 1.0, "probability that a batch is mixed (mixup or cutmix)",
           "augmentation", minimum=0.0, maximum=1.0),
    Option("label_smoothing", "float", 0.1, "label smoothing of every exit's cross-entropy",
           "augmentation", minimum=0.0, below=1.0),
    Option("crop_pct", "float", 0.875, "eval: resize to round(img_size / crop_pct), then center-crop "
           "img_size", "augmentation", minimum=0.05, maximum=1.0),

    Option("opt", "str", "adamw", "mindcv optimizer", "optimisation",
           choices=("adamw", "adam", "sgd", "momentum", "nesterov", "lion", "nadam", "adan", "lamb")),
    Option("lr", "float", 5e-4, "peak learning rate (for the whole batch across devices)", "optimisation",
           minimum=0.0),
    Option("weight_decay", "float", 0.05, "decoupled weight decay", "optimisation", minimum=0.0),
    Option("weight_decay_filter", "str", "norm_and_bias", "mindcv's weight-decay filter; norm_and_bias also exempts class tokens and "
           "position embeddings",
           "optimisation", choices=("disable", "norm_and_bias", "auto")),
    Option("clip_grad_norm", "float", None, "clip the global gradient norm to this (null = no clipping)",
           "optimisation", nullable=True, minimum=0.0),
    Option("ema", "bool", False, "keep an exponential moving average of the weights (evaluated and saved)",
           "optimisation"),
    Option("ema_decay", "float", 0.99996, "EMA decay per step", "optimisation", minimum=0.0, below=1.0),

    Option("scheduler", "str", "cosine_decay", "learning-rate schedule after warm-up (mindcv)", "schedule",
           choices=("cosine_decay", "constant")),
    Option("epochs", "int", 300, "warm-up + decay epochs; training runs epochs + cooldown_epochs",
           "schedule", minimum=1),
    Option("warmup_epochs", "int", 20, "linear warm-up epochs, from warmup_lr to lr", "schedule", minimum=0),
    Option("warmup_lr", "float", 1e-6, "learning rate at the first step", "schedule", minimum=0.0),
    Option("min_lr", "float", 1e-5, "learning rate at the end of the decay and during cool-down",
           "schedule", minimum=0.0),
    Option("cooldown_epochs", "int", 10, "epochs at min_lr after the decay", "schedule", minimum=0),

    Option("device_target", "str", "auto", "auto picks Ascend, then GPU, then CPU", "device",
           choices=("auto", "Ascend", "GPU", "CPU")),
    Option("amp_level", "str", "auto", "mixed precision level; auto = O2 on Ascend/GPU, O0 (fp32) on CPU",
           "device", choices=("auto", "O0", "O1", "O2", "O3")),
    Option("amp_dtype", "str", "auto", "low-precision dtype; auto = float16", "device",
           choices=("auto", "float16", "bfloat16")),
    Option("loss_scale_type", "str", "auto", "auto = dynamic for float16, none otherwise", "device",
           choices=("auto", "none", "fixed", "dynamic")),
    Option("loss_scale", "float", 65536.0, "(initial) loss scale", "device", minimum=1.0),
    Option("data_sink", "bool", False, "Ascend/GPU: feed batches through the device's data queue "
           "(mindspore.data_sink; ignored on CPU; not yet measured on a device)", "device"),
    Option("seed", "int", 0, "seed for weights, data order and augmentation", "device", minimum=0),

    Option("output_dir", "str", "outputs/run", "the run's folder: checkpoints, config.yaml, log.jsonl, run.json "
           "(one run per folder)", "checkpoints"),
    Option("overwrite", "bool", False, "a new run into an output_dir holding another run moves that run to "
           "<output_dir>.old-<date>-<time> first (else it refuses to start)", "checkpoints"),
    Option("save_every_epochs", "int", 1, "checkpoint at the end of every N epochs (0 = never)",
           "checkpoints", minimum=0),
    Option("save_every_steps", "int", 0, "also checkpoint every N steps (0 = never)", "checkpoints", minimum=0),
    Option("keep_checkpoints", "int", 3, "keep the last N periodic checkpoints (best.ckpt is kept apart)",
           "checkpoints", minimum=1),
    Option("resume", "str", None, "checkpoint to continue from, or auto = the newest in output_dir",
           "checkpoints", nullable=True),
    Option("max_steps", "int", None, "stop after this many steps in total (smoke tests)", "checkpoints",
           nullable=True, minimum=1),

    Option("log_every_steps", "int", 50, "a log line every N steps", "logging", minimum=1),
    Option("val_every_epochs", "int", 1, "validate every N epochs (0 = never)", "logging", minimum=0),
    Option("progress_bar", "str", "auto", "auto = when stdout is a terminal", "logging",
           choices=("auto", "always", "never")),
)
OPTIONS = {option.name: option for option in SCHEMA}

TrainConfig = dataclasses.make_dataclass(
    "TrainConfig", [(option.name, typing.Any) for option in SCHEMA], frozen=True,
    namespace={"__doc__": "A validated training configuration (attribute per schema key).",
               "as_dict": lambda self: dataclasses.asdict(self)})


def _describe(value):
    return f"{value!r} ({type(value).__name__})"


def _coerce(option, value):
    """``value`` as the option's type, or raise ``ValueError`` saying what was expected."""
    kind = option.kind
    if kind == "bool":
        if isinstance(value, bool):
            return value
        raise ValueError(f"must be true or false, got {_describe(value)}")
    if kind == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ValueError(f"must be an integer, got {_describe(value)}")
    if kind == "float":
        # YAML 1.1 reads 1e-3 (no dot) as a string; accept any spelling float() accepts.
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ValueError(f"must be a number, got {_describe(value)}")
    if kind == "str":
        if isinstance(value, str):
            return value
        raise ValueError(f"must be a string, got {_describe(value)}")
    if kind == "ints":
        if isinstance(value, (list, tuple)) and value and all(
                isinstance(v, int) and not isinstance(v, bool) for v in value):
            return tuple(value)
        raise ValueError(f"must be a non-empty list of integers, got {_describe(value)}")
    if kind == "strs":
        if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) and v for v in value):
            if len(set(value)) < len(value):
                repeated = sorted({v for v in value if list(value).count(v) > 1})
                raise ValueError(f"must not repeat a name, got {', '.join(repeated)} more than once")
            return tuple(value)
        raise ValueError(f"must be a non-empty list of non-empty strings, got {_describe(value)}")
    if kind == "pair":
        if isinstance(value, (list, tuple)) and len(value) == 2 and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            low, high = float(value[0]), float(value[1])
            if low > high:
                raise ValueError(f"must be [low, high] with low <= high, got {list(value)}")
            return low, high
        raise ValueError(f"must be a list of two numbers [low, high], got {_describe(value)}")
    raise AssertionError(f"unknown option kind {kind}")


def _check_range(option, value):
    items = value if isinstance(value, tuple) else (value,)
    for item in items:
        if not isinstance(item, (int, float)):
            continue
        if option.minimum is not None and item < option.minimum:
            raise ValueError(f"must be >= {option.minimum}, got {value!r}")
        if option.maximum is not None and item > option.maximum:
            raise ValueError(f"must be <= {option.maximum}, got {value!r}")
        if option.below is not None and item >= option.below:
            raise ValueError(f"must be < {option.below}, got {value!r}")
    if option.choices and value not in option.choices:
        raise ValueError(f"must be one of {', '.join(option.choices)}, got {value!r}")


def _validate_value(option, value):
    if value is None:
        if option.nullable:
            return None
        raise ValueError("must be set (null is not allowed)")
    value = _coerce(option, value)
    _check_range(option, value)
    return value


# Names other trainers (timm, mindcv, PyTorch scripts) use for our keys.
ALIASES = {
    "learning_rate": "lr", "base_lr": "lr", "wd": "weight_decay", "optimizer": "opt", "num_epochs": "epochs",
    "epoch_size": "epochs", "warmup": "warmup_epochs", "warmup_learning_rate": "warmup_lr",
    "min_learning_rate": "min_lr", "eta_min": "min_lr", "bs": "batch_size", "batch": "batch_size",
    "workers": "num_workers", "data_path": "data_dir", "data_root": "data_dir", "dataset_dir": "data_dir",
    "out_dir": "output_dir", "ckpt_save_dir": "output_dir", "save_dir": "output_dir", "amp": "amp_level",
    "device": "device_target", "model_name": "model", "arch": "model", "image_size": "img_size",
    "smoothing": "label_smoothing", "clip_grad": "clip_grad_norm", "model_ema": "ema",
    "model_ema_decay": "ema_decay", "reprob": "re_prob", "aa": "auto_augment", "checkpoint": "pretrained",
    "ckpt_path": "pretrained", "resume_from": "resume", "log_interval": "log_every_steps",
    "sink_mode": "data_sink", "dataset_sink_mode": "data_sink", "drop_path": "drop_path_rate",
}


def suggest_key(key):
    """The valid key a mistyped or foreign ``key`` most likely means, or None.

    Compares against the keys and the names other trainers use for them (``ALIASES``):
    ``lerning_rate`` is close to ``learning_rate``, which is ``lr`` here. A close match to a
    key or alias wins over a looser one."""
    key = key.strip().lower().replace("-", "_")
    if key in OPTIONS:
        return key
    if key in ALIASES:
        return ALIASES[key]
    candidates = {name: name for name in OPTIONS}
    candidates.update(ALIASES)
    close = difflib.get_close_matches(key, candidates, n=1, cutoff=0.75)
    if close:
        return candidates[close[0]]
    close = difflib.get_close_matches(key, candidates, n=1, cutoff=0.6)
    return candidates[close[0]] if close else None


def _unknown_key_message(key, source):
    close = suggest_key(key)
    hint = f"; did you mean {close!r}?" if close else "; see `python -m dvt_ms.train --list_keys`"
    return f"{source}: unknown key {key!r}{hint}"


def _cross_checks(values):
    """Checks that involve several keys; returns error messages."""
    errors = []
    if values["data_dir"] is None:
        errors.append("data_dir must be set (the dataset root)")
    if values["warmup_epochs"] > values["epochs"]:
        errors.append(f"warmup_epochs ({values['warmup_epochs']}) exceeds epochs ({values['epochs']})")
    if values["dataset"] in ("cifar10", "cifar100"):
        for key in ("train_split", "val_split"):
            if values[key] not in ("train", "test"):
                errors.append(f"{key} must be train or test for {values['dataset']}, got {values[key]!r}")
    if values["holdout_per_class"] and values["dataset"] != "imagenet":
        errors.append(f"holdout_per_class needs image folders (dataset: imagenet), got dataset {values['dataset']!r}")
    if values["mixup"] + values["cutmix"] > 0 and values["batch_size"] % 2:
        errors.append(f"batch_size must be even when mixup/cutmix is on (they pair images), "
                      f"got {values['batch_size']}")
    if values["min_lr"] > values["lr"]:
        errors.append(f"min_lr ({values['min_lr']}) exceeds lr ({values['lr']})")
    policy = values["auto_augment"]
    if policy is not None and not policy.startswith(("randaug", "autoaug", "3a", "trivialaugwide", "augmix")):
        errors.append(f"auto_augment {policy!r} is not a mindcv policy (randaug-..., autoaug, 3a, "
                      "trivialaugwide, augmix)")
    if values["patch_grids"] is not None and PRESETS[values["model"]]["family"] != "deit":
        errors.append(f"patch_grids is for deit models; the token grids of {values['model']} follow from img_size "
                      "(set patch_grids: null)")
    try:
        architecture = build_config(values["model"], **model_overrides(values))
    except (ValueError, TypeError) as error:
        errors.append(f"model {values['model']!r}: {error}")
    else:
        names = values["class_names"]
        if names is not None and len(names) != architecture.num_classes:
            errors.append(f"class_names has {len(names)} names but the model has num_classes "
                          f"{architecture.num_classes}")
    return errors


def model_overrides(config):
    """The DVTConfig overrides a config sets (its non-null model keys)."""
    values = config if isinstance(config, dict) else config.as_dict()
    return {key: values[key] for key in OVERRIDABLE_KEYS if values[key] is not None}


def load_config(path=None, overrides=None):
    """Validated ``TrainConfig`` from YAML file ``path`` (optional; a shipped config's name such as
    ``configs/tiny_cpu.yaml`` works from any folder) and ``overrides`` (dict)."""
    path = config_path(path)
    layers = []
    if path is not None:
        try:
            with open(path) as f:
                loaded = yaml.safe_load(f)
        except OSError as error:
            raise ConfigError(f"cannot read config {path}: {error.strerror}") from None
        except yaml.YAMLError as error:
            raise ConfigError(f"{path} is not valid YAML: {error}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path} must be a mapping of key: value, got {type(loaded).__name__}")
        layers.append((str(path), loaded))
    if overrides:
        layers.append(("command line", dict(overrides)))

    values = {option.name: option.default for option in SCHEMA}
    errors = []
    for source, layer in layers:
        for key, value in layer.items():
            option = OPTIONS.get(key)
            if option is None:
                errors.append(_unknown_key_message(str(key), source))
                continue
            try:
                values[key] = _validate_value(option, value)
            except ValueError as error:
                errors.append(f"{source}: {key} {error}")
    if not errors:
        errors = _cross_checks(values)
    if errors:
        raise ConfigError("invalid config:\n  " + "\n  ".join(errors))
    return TrainConfig(**values)


def _format_default(value):
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return "[" + ", ".join(str(v) for v in value) + "]"
    return str(value)


def schema_markdown():
    """The schema as a Markdown table (key, type, default, meaning), grouped by section."""
    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]
    section = None
    for option in SCHEMA:
        if option.section != section:
            section = option.section
            lines.append(f"| **{section}** | | | |")
        kind = _KIND_NAMES.get(option.kind, option.kind) + (" or null" if option.nullable else "")
        default = "preset" if option.section == "model" and option.name in OVERRIDABLE_KEYS \
            else _format_default(option.default)
        doc = option.doc
        if option.choices:
            doc += f" ({' / '.join(option.choices)})"
        lines.append(f"| `{option.name}` | {kind} | {default} | {doc.replace('|', '/')} |")
    return "\n".join(lines) + "\n"
