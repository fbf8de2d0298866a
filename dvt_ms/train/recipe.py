"""The training recipe the shipped configs hold, as one table generated from them (docs/training.md).

    python -m dvt_ms.train.recipe configs/dvt_t2t_vit_12_imagenet.yaml ... > table.md

Every value is the one a run gets (``load_config``: the file over the schema's defaults; model keys
resolved against the preset), so a changed default shows up here as well as a changed file.
"""
import pathlib
import sys

from ..config import SCHEMA, load_config
from ..models.presets import OVERRIDABLE_KEYS

__all__ = ["RECIPE_KEYS", "recipe_markdown"]

# The keys that make a training recipe: the augmentation, optimisation and schedule sections, and
# these others. Data locations, devices, checkpoints and logging are not part of it.
_RECIPE_SECTIONS = ("augmentation", "optimisation", "schedule")
_OTHER_KEYS = ("model", "pretrained", "num_classes", "img_size", "drop_rate", "drop_path_rate", "dataset",
               "batch_size", "amp_level")
RECIPE_KEYS = tuple(option.name for option in SCHEMA
                    if option.section in _RECIPE_SECTIONS or option.name in _OTHER_KEYS)


def _format(value):
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple):
        return "[" + ", ".join(_format(item) for item in value) + "]"
    return str(value)


def recipe_markdown(config_paths):
    """A Markdown table: one row per recipe key, one column per config (named by its file stem)."""
    paths = [pathlib.Path(path) for path in config_paths]
    configs = []
    for path in paths:
        config = load_config(path, {"data_dir": "unused"})
        configs.append({key: getattr(config.arch, key) if key in OVERRIDABLE_KEYS else value
                        for key, value in config.as_dict().items()})
    lines = ["| key | " + " | ".join(f"`{path.stem}`" for path in paths) + " |",
             "|---|" + "---|" * len(paths)]
    for key in RECIPE_KEYS:
        lines.append(f"| `{key}` | " + " | ".join(_format(config[key]) for config in configs) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(recipe_markdown(sys.argv[1:]))
