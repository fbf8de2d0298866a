"""What a training run recorded is what later commands use.

A training run's folder holds ``run.json`` and ``config.yaml`` (``dvt_ms.train.run_folder``): the
config the run trained with, including the class names it learned (in label order). Export and
evaluation of a checkpoint that lies in such a folder take the model, its class names and its
preprocessing from that record, not from whatever config file or class folders the user points at
today: a renamed class folder, or a generic config such as ``configs/tiny_cpu.yaml``, would
otherwise label the heads wrongly or ship a model without class names. ``key=value`` overrides
given on the command line still win (the user asked for them); any other difference is named in
a warning.
"""
import logging
import os

import yaml

from .config import load_config
from .errors import ConfigError
from .models.presets import OVERRIDABLE_KEYS

__all__ = ["RUN_CONFIG_NAME", "RUN_RECORD_NAME", "RECORDED_KEYS", "run_folder_of", "config_for_checkpoint"]

_logger = logging.getLogger(__name__)

RUN_CONFIG_NAME = "config.yaml"
RUN_RECORD_NAME = "run.json"
# What training saw and later commands must see alike: the architecture, the labels, the preprocessing.
RECORDED_KEYS = ("model", *OVERRIDABLE_KEYS, "class_names", "crop_pct", "interpolation")


def run_folder_of(checkpoint):
    """The training run folder ``checkpoint`` lies in (it holds run.json and config.yaml), else None."""
    if not checkpoint:
        return None
    folder = os.path.dirname(os.path.abspath(checkpoint))
    if all(os.path.isfile(os.path.join(folder, name)) for name in (RUN_RECORD_NAME, RUN_CONFIG_NAME)):
        return folder
    return None


def _recorded_values(folder):
    path = os.path.join(folder, RUN_CONFIG_NAME)
    try:
        with open(path, encoding="utf-8") as handle:
            values = yaml.safe_load(handle)
    except (OSError, yaml.YAMLError) as error:
        raise ConfigError(f"cannot read the run's recorded config {path}: {error}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path} is not a mapping of key: value; it is not a run's recorded config")
    return {key: values[key] for key in RECORDED_KEYS if key in values}


def _shown(value):
    return list(value) if isinstance(value, tuple) else value


def config_for_checkpoint(config_path, checkpoint, overrides=None, command="export"):
    """``(config, run folder or None)`` for ``command`` (calibrate or export) of ``checkpoint``.

    When the checkpoint lies in a training run's folder, the run's recorded ``RECORDED_KEYS`` replace
    those of ``config_path`` (a warning names each that differed), and ``overrides`` apply last."""
    overrides = dict(overrides or {})
    folder = run_folder_of(checkpoint)
    if folder is None:
        return load_config(config_path, overrides, command), None
    recorded = {key: value for key, value in _recorded_values(folder).items() if key not in overrides}
    given = load_config(config_path, overrides, command).as_dict()
    differing = [f"{key} {_shown(given[key])!r} -> {_shown(value)!r}" for key, value in recorded.items()
                 if _shown(given[key]) != _shown(value)]
    if differing:
        _logger.warning("%s was trained in %s: using what that run recorded instead of %s: %s", checkpoint, folder,
                        config_path, "; ".join(differing))
    return load_config(config_path, {**recorded, **overrides}, command), folder
