"""Images held out of training for calibration, chosen once per run and recorded with it.

With ``holdout_per_class: N`` a run keeps N images of every class of the training split out of
training, drawn by the seed from the images that passed the check. The choice is written to
``<output_dir>/holdout.json`` as training starts (``write_holdout``, after the run folder is
claimed, so a run moved aside with ``overwrite=true`` keeps its own record); a resumed run reads it back (so it trains on
exactly the same images even if the folder changed), and calibration (``--calib_split holdout``,
the default when the record exists) uses exactly those images.
"""
import json
import logging
import os

import numpy as np

from ..errors import DataError
from ..fileio import atomic_write_text

__all__ = ["HOLDOUT_FILE", "choose_holdout", "read_holdout", "run_holdout", "write_holdout"]

_logger = logging.getLogger(__name__)

HOLDOUT_FILE = "holdout.json"


def choose_holdout(split, per_class, seed):
    """Files (relative to the split) of ``per_class`` images per class of ``split``, drawn by ``seed``."""
    rng = np.random.default_rng([seed, per_class])
    chosen = []
    for label, name in enumerate(split.class_names):
        candidates = np.flatnonzero(split.labels == label)
        if len(candidates) == 0:
            continue
        if len(candidates) <= per_class:
            raise DataError(f"{split.root}: class {name} has {len(candidates)} usable image(s); holdout_per_class "
                            f"{per_class} would leave none for training")
        chosen.extend(split.files[i] for i in np.sort(rng.choice(candidates, per_class, replace=False)))
    return chosen


def read_holdout(output_dir):
    """The hold-out record of the run in ``output_dir`` (a dict), or None if it has none."""
    path = os.path.join(output_dir, HOLDOUT_FILE)
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            record = json.load(handle)
        if not isinstance(record.get("files"), list) or not isinstance(record.get("per_class"), int):
            raise ValueError("no files or per_class")
    except (OSError, ValueError, AttributeError) as error:
        raise DataError(f"{path} is not a hold-out record this project wrote ({error})") from None
    record["path"] = path
    return record


def run_holdout(config, split, write, previous_run=True):
    """The files of ``split`` (the training split) this run holds out: from its record in
    ``config.output_dir`` if there is one (and ``previous_run``: the folder's run is continued),
    else chosen now and, when ``write``, recorded there."""
    record = read_holdout(config.output_dir) if previous_run else None
    wanted = config.holdout_per_class
    if record is not None:
        if (record["per_class"], record.get("seed"), record.get("split")) != (wanted, config.seed, config.train_split):
            raise DataError(f"{record['path']} holds out {record['per_class']} images per class of split "
                            f"{record.get('split')!r} (seed {record.get('seed')}), but this run asks for "
                            f"holdout_per_class {wanted} of {config.train_split!r} (seed {config.seed}); keep those "
                            "settings to continue this run, or use a new output_dir")
        _logger.info("holding out the %d training images recorded in %s", len(record["files"]), record["path"])
        return record["files"]
    if not wanted:
        return []
    files = choose_holdout(split, wanted, config.seed)
    if write:
        write_holdout(config, split, files)
    _logger.info("holding out %d images per class (%d in all) for calibration; recorded in %s", wanted, len(files),
                 os.path.join(config.output_dir, HOLDOUT_FILE))
    return files


def write_holdout(config, split, files):
    """Record ``files`` (relative to ``split``, the training split) as the run's held-out images."""
    record = {"split": config.train_split, "root": os.path.abspath(split.root), "per_class": config.holdout_per_class,
              "seed": config.seed, "class_names": split.class_names, "files": list(files)}
    atomic_write_text(os.path.join(config.output_dir, HOLDOUT_FILE), json.dumps(record, indent=1))
