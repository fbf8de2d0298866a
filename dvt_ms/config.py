"""The run configuration shared by train, calibrate and export: one schema, flat mindcv-style
YAML keys, validated on load.

``SCHEMA`` is the single source of truth: every key as an ``Option`` (a ``dvt_ms.schema.Field``)
with its type, default and a one-line doc. ``load_config`` reads a YAML file plus ``key=value`` overrides and
returns a ``RunConfig``: one attribute per key, and ``arch``, the ``DVTConfig`` of the model,
built and checked once. Every problem is reported at once: unknown keys (with the nearest valid
one), wrong types and impossible values, naming the key, the value and where it came from.
Checks that involve several keys run for the command that uses them (``load_config(...,
command=...)``): export needs no dataset, calibration no training schedule.
``schema_markdown`` renders the schema as the table of docs/configuration.md.

Model keys are the fields of ``dvt_ms.models.DVTConfig`` (``MODEL_FIELDS``) but ``family``, which
the preset fixes: ``null`` means "the preset's value".
"""
import dataclasses
import typing

import yaml

from .contract.preprocessing import DEFAULT_PREPROCESSING, INTERPOLATIONS
from .errors import ConfigError
from .models.presets import MODEL_FIELDS, OVERRIDABLE_KEYS, build_config, list_presets
from .schema import Field as Option, check_fields, format_default, raise_problems, suggest_key as _nearest
from .shipped_configs import config_path

__all__ = ["Option", "SCHEMA", "OPTIONS", "ALIASES", "COMMANDS", "RunConfig", "load_config", "model_overrides",
           "schema_markdown", "suggest_key"]

_KIND_NAMES = {"ints": "list of int", "floats": "list of float", "strs": "list of str", "pair": "[float, float]"}


def _model_options():
    """The run config's model keys: DVTConfig's fields, null meaning the preset's value."""
    return [dataclasses.replace(field, default=None, nullable=True, section="model")
            for field in MODEL_FIELDS if field.name in OVERRIDABLE_KEYS]


SCHEMA = (
    Option("model", "str", "dvt_t2t_vit_12", "preset name (`dvt-flops --list` lists them)", "model",
           choices=tuple(list_presets())),
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
    Option("image_check_wait_minutes", "float", 120.0, "under data parallel, how long the other ranks wait for "
           "rank 0's image check (in output_dir: it must be on a filesystem all nodes share) before giving up; "
           "sized for ImageNet on a slow filesystem", "data", minimum=0.0),
    Option("holdout_per_class", "int", 0, "images per class kept out of training (drawn by seed, recorded in "
           "output_dir/holdout.json); calibration then uses exactly those", "data", minimum=0),
    Option("batch_size", "int", 64, "images per device per step", "data", minimum=1),
    Option("num_workers", "int", 4, "data pipeline workers per device", "data", minimum=1),

    Option("interpolation", "str", DEFAULT_PREPROCESSING["interpolation"], "resize interpolation (train and eval)",
           "augmentation", choices=INTERPOLATIONS),
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
    Option("crop_pct", "float", DEFAULT_PREPROCESSING["crop_pct"], "eval: resize to round(img_size / crop_pct), "
           "then center-crop img_size", "augmentation", minimum=0.05, maximum=1.0),

    Option("opt", "str", "adamw", "mindcv optimizer", "optimisation",
           choices=("adamw", "adam", "sgd", "momentum", "nesterov", "lion", "nadam", "adan", "lamb")),
    Option("lr", "float", 5e-4, "peak learning rate (for the whole batch across devices)", "optimisation",
           minimum=0.0),
    Option("weight_decay", "float", 0.05, "decoupled weight decay", "optimisation", minimum=0.0),
    Option("weight_decay_filter", "str", "ndim1_and_bias", "parameters spared weight decay: ndim1_and_bias = 1-D ones "
           "and *.bias (the authors'), norm_and_bias = mindcv's (also class tokens and position embeddings), auto = "
           "MindSpore's (norms only), disable = none",
           "optimisation", choices=("ndim1_and_bias", "norm_and_bias", "auto", "disable")),
    Option("opt_betas", "floats", (0.9, 0.999), "adamw: the moment decay rates [beta1, beta2]", "optimisation",
           minimum=0.0, below=1.0, length=2),
    Option("opt_eps", "float", 1e-8, "adamw: epsilon added to sqrt(v) (the authors': PyTorch's 1e-8)",
           "optimisation", above=0.0),
    Option("clip_grad_norm", "float", None, "clip the global gradient norm to this (null = no clipping)",
           "optimisation", nullable=True, minimum=0.0),
    Option("ema", "bool", False, "keep an exponential moving average of the weights (evaluated and saved)",
           "optimisation"),
    Option("ema_decay", "float", 0.99996, "EMA decay per step", "optimisation", minimum=0.0, below=1.0),

    Option("scheduler", "str", "cosine_decay", "learning-rate curve: cosine_decay = timm's cosine from lr to min_lr "
           "over epochs, the warm-up overlapping its start; constant = lr after the warm-up", "schedule",
           choices=("cosine_decay", "constant")),
    Option("epochs", "int", 300, "epochs of the cosine (the warm-up overlaps its start); training runs "
           "epochs + cooldown_epochs",
           "schedule", minimum=1),
    Option("warmup_epochs", "int", 20, "linear warm-up epochs, from warmup_lr to lr", "schedule", minimum=0),
    Option("warmup_lr", "float", 1e-6, "learning rate at the first step", "schedule", minimum=0.0),
    Option("min_lr", "float", 1e-5, "learning rate at the end of the decay and during cool-down",
           "schedule", minimum=0.0),
    Option("cooldown_epochs", "int", 10, "epochs at min_lr after the decay", "schedule", minimum=0),
    Option("lr_epoch_stair", "bool", True, "the learning rate changes once per epoch, as timm steps the published "
           "schedule (false: every step)", "schedule"),

    Option("device_target", "str", "auto", "auto picks Ascend, then GPU, then CPU", "device",
           choices=("auto", "Ascend", "GPU", "CPU")),
    Option("amp_level", "str", "auto", "mixed precision level; auto = O2 on Ascend/GPU, O0 (fp32) on CPU",
           "device", choices=("auto", "O0", "O1", "O2", "O3")),
    Option("amp_dtype", "str", "auto", "low-precision dtype; auto = float16", "device",
           choices=("auto", "float16", "bfloat16")),
    Option("loss_scale_type", "str", "auto", "auto = dynamic for float16, none otherwise", "device",
           choices=("auto", "none", "fixed", "dynamic")),
    Option("loss_scale", "float", 65536.0, "(initial) loss scale", "device", minimum=1.0),
    Option("fast_float32", "bool", False, "let float32 matmuls and convolutions run in HF32 (Ascend) / TF32 "
           "(GPU): faster, but not float32 (parity with the published models fails); false = true float32",
           "device"),
    Option("max_skipped_steps", "int", 20, "a step with a non-finite loss or gradients is skipped (weights "
           "untouched, a dynamic loss scale halved); this many in a row stop the run, keeping the last checkpoint",
           "device", minimum=1),
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


def _as_dict(self):
    """The config's keys and values (not ``arch``): what a run records in its config.yaml."""
    return {option.name: getattr(self, option.name) for option in SCHEMA}


RunConfig = dataclasses.make_dataclass(
    "RunConfig",
    [(option.name, typing.Any) for option in SCHEMA] + [("arch", typing.Any, dataclasses.field(repr=False))],
    frozen=True,
    namespace={"__doc__": "A validated run configuration: an attribute per schema key, and ``arch``, the "
                          "model's ``DVTConfig`` (built once by ``load_config``; change model keys through it).",
               "as_dict": _as_dict})


# Names other trainers (timm, mindcv, PyTorch scripts) use for our keys.
ALIASES = {
    "learning_rate": "lr", "base_lr": "lr", "wd": "weight_decay", "optimizer": "opt", "num_epochs": "epochs",
    "epoch_size": "epochs", "warmup": "warmup_epochs", "warmup_learning_rate": "warmup_lr",
    "min_learning_rate": "min_lr", "eta_min": "min_lr", "bs": "batch_size", "batch": "batch_size",
    "eps": "opt_eps", "betas": "opt_betas", "sched": "scheduler",
    "workers": "num_workers", "data_path": "data_dir", "data_root": "data_dir", "dataset_dir": "data_dir",
    "out_dir": "output_dir", "ckpt_save_dir": "output_dir", "save_dir": "output_dir", "amp": "amp_level",
    "device": "device_target", "model_name": "model", "arch": "model", "image_size": "img_size",
    "smoothing": "label_smoothing", "clip_grad": "clip_grad_norm", "model_ema": "ema",
    "model_ema_decay": "ema_decay", "reprob": "re_prob", "aa": "auto_augment", "checkpoint": "pretrained",
    "ckpt_path": "pretrained", "resume_from": "resume", "log_interval": "log_every_steps",
    "drop_path": "drop_path_rate",
}


# Keys taken out: (the value that asked for nothing, so older run folders' config.yaml still load;
# why, said instead of a nearest-key guess for any other value).
REMOVED = {
    "data_sink": (False, "removed: sinking the data to the device queue was never measured on a device and did "
                         "not honour resume, max_steps or the image checks; batches go through the host loop"),
}
REMOVED.update({alias: REMOVED["data_sink"] for alias in ("sink_mode", "dataset_sink_mode")})


def _removed_key_problems(layer, source):
    return [f"{source}: {key} was {REMOVED[key][1]} (delete the key)"
            for key, value in layer.items() if key in REMOVED and value != REMOVED[key][0]]


def suggest_key(key):
    """The valid key a mistyped or foreign ``key`` most likely means, or None.

    Compares against the keys and the names other trainers use for them (``ALIASES``):
    ``lerning_rate`` is close to ``learning_rate``, which is ``lr`` here."""
    return _nearest(key, OPTIONS, ALIASES)


def _training_problems(values):
    """The schedule and the mixing rules: keys only training uses."""
    problems = []
    if values["data_dir"] is None:
        problems.append("data_dir must be set (the dataset root)")
    if values["warmup_epochs"] > values["epochs"]:
        problems.append(f"warmup_epochs ({values['warmup_epochs']}) exceeds epochs ({values['epochs']})")
    if values["mixup"] + values["cutmix"] > 0 and values["batch_size"] % 2:
        problems.append(f"batch_size must be even when mixup/cutmix is on (they pair images), "
                        f"got {values['batch_size']}")
    if values["min_lr"] > values["lr"]:
        problems.append(f"min_lr ({values['min_lr']}) exceeds lr ({values['lr']})")
    policy = values["auto_augment"]
    if policy is not None and not policy.startswith(("randaug", "autoaug", "3a", "trivialaugwide", "augmix")):
        problems.append(f"auto_augment {policy!r} is not a mindcv policy (randaug-..., autoaug, 3a, "
                        "trivialaugwide, augmix)")
    return problems


def _dataset_problems(values):
    """The dataset's splits and hold-out: keys training and calibration use."""
    problems = []
    if values["dataset"] in ("cifar10", "cifar100"):
        for key in ("train_split", "val_split"):
            if values[key] not in ("train", "test"):
                problems.append(f"{key} must be train or test for {values['dataset']}, got {values[key]!r}")
    if values["holdout_per_class"] and values["dataset"] != "imagenet":
        problems.append(f"holdout_per_class needs image folders (dataset: imagenet), got dataset "
                        f"{values['dataset']!r}")
    return problems


# The commands that read a run config, each with the cross-key checks of the keys it uses.
_COMMAND_CHECKS = {
    "train": (_training_problems, _dataset_problems),
    "calibrate": (_dataset_problems,),
    "export": (),
}
COMMANDS = tuple(_COMMAND_CHECKS)


def _architecture(values, problems):
    """The model's DVTConfig from the checked ``values``, or None with its problems added."""
    name = values["model"]
    if values["patch_grids"] is not None and build_config(name).family != "deit":
        problems.append(f"patch_grids is for deit models; the token grids of {name} follow from img_size "
                        "(set patch_grids: null)")
        return None
    try:
        architecture = build_config(name, **model_overrides(values))
    except ConfigError as error:
        problems.extend(f"model {name!r}: {problem}" for problem in getattr(error, "problems", [str(error)]))
        return None
    names = values["class_names"]
    if names is not None and len(names) != architecture.num_classes:
        problems.append(f"class_names has {len(names)} names but the model has num_classes "
                        f"{architecture.num_classes}")
    return architecture


def model_overrides(config):
    """The DVTConfig overrides a config sets (its non-null model keys)."""
    values = config if isinstance(config, dict) else config.as_dict()
    return {key: values[key] for key in OVERRIDABLE_KEYS if values[key] is not None}


def _read_yaml(path):
    try:
        with open(path) as f:
            loaded = yaml.safe_load(f)
    except OSError as error:
        raise ConfigError(f"cannot read config {path}: {error.strerror}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {error}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path} must be a mapping of key: value, got {type(loaded).__name__}")
    return loaded


def load_config(path=None, overrides=None, command="train"):
    """Validated ``RunConfig`` from YAML file ``path`` (optional; a shipped config's name such as
    ``configs/tiny_cpu.yaml`` works from any folder) and ``overrides`` (dict), for ``command`` (one
    of ``COMMANDS``), whose cross-key checks it runs.

    Raises one ``ConfigError`` listing every problem."""
    if command not in _COMMAND_CHECKS:
        raise ValueError(f"command must be one of {', '.join(COMMANDS)}, got {command!r}")
    path = config_path(path)
    layers = [(str(path), _read_yaml(path))] if path is not None else []
    if overrides:
        layers.append(("command line", dict(overrides)))
    values, problems = {option.name: option.default for option in SCHEMA}, []
    for source, layer in layers:
        problems += _removed_key_problems(layer, source)
        layer = {key: value for key, value in layer.items() if key not in REMOVED}
        values, layer_problems = check_fields(SCHEMA, layer, source, ALIASES, values=values,
                                              unknown_hint="see `python -m dvt_ms.train --list_keys`")
        problems += layer_problems
    architecture = None
    if not problems:
        for check in _COMMAND_CHECKS[command]:
            problems += check(values)
        architecture = _architecture(values, problems)
    raise_problems(problems, "invalid config")
    return RunConfig(**values, arch=architecture)


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
            else format_default(option.default)
        doc = option.doc
        if option.choices:
            doc += f" ({' / '.join(option.choices)})"
        lines.append(f"| `{option.name}` | {kind} | {default} | {doc.replace('|', '/')} |")
    return "\n".join(lines) + "\n"
