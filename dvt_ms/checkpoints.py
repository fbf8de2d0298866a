"""Training checkpoints: atomic writes, keep-last-k plus best, resume state, pretrained weights.

A training checkpoint holds everything a killed run needs to continue: the model, the optimizer
state, the EMA weights, the loss scale, and where training stood (epoch, batches consumed in that
epoch, global step, best accuracy). Model parameters keep their plain names (``stages.*``), so a
training checkpoint also works as ``pretrained``.

Writes are atomic: MindSpore's saver deletes an existing file before writing its replacement, so
checkpoints are written to a temporary file in the same directory, fsync'ed, and moved over the
old one with ``os.replace`` (``fileio.atomic_write``). A crash mid-save leaves the previous
checkpoint intact.
"""
import dataclasses
import logging
import os
import re

import mindspore as ms

from .fileio import atomic_write

__all__ = ["CheckpointError", "TrainingState", "CheckpointManager", "atomic_save_checkpoint",
           "load_training_checkpoint", "load_pretrained", "load_model_weights"]

_logger = logging.getLogger(__name__)

_PERIODIC = re.compile(r"^step_(\d+)\.ckpt$")
BEST_NAME = "best.ckpt"
_HEAD = re.compile(r"^stages\.\d+\.head\.(weight|bias)$")
# Recomputed from the config on every start (its length depends on steps per epoch).
_NOT_SAVED = ("learning_rate",)
_STATE_PREFIX = "training_state."
_EMA_PREFIX = "ema."   # TrainStep's names for the EMA copies of the model's parameters


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used for this run; the message says why."""


@dataclasses.dataclass
class TrainingState:
    """Where training stands; saved inside every training checkpoint."""

    epoch: int = 0              # current epoch (0-based)
    step_in_epoch: int = 0      # batches of `epoch` already trained on
    global_step: int = 0
    steps_per_epoch: int = 0    # a resume is exact only with the same value
    best_top1: float = -1.0     # best last-exit top-1 (%) so far

    def to_append_dict(self):
        return {_STATE_PREFIX + key: value for key, value in dataclasses.asdict(self).items()}

    @classmethod
    def pop_from(cls, params, path):
        values = {}
        for field in dataclasses.fields(cls):
            key = _STATE_PREFIX + field.name
            if key not in params:
                raise CheckpointError(f"{path} is not a training checkpoint (no {key}); "
                                      "use it as `pretrained` instead of `resume`")
            values[field.name] = field.type(params.pop(key).asnumpy().item())
        return cls(**values)


def atomic_save_checkpoint(cell, path, append_dict=None):
    """Save ``cell``'s parameters to ``path`` so that ``path`` is always either old or new, never partial."""
    def write(temporary):
        ms.save_checkpoint(cell, temporary, append_dict=append_dict, crc_check=True,
                           choice_func=lambda name: name not in _NOT_SAVED)
        with open(temporary, "rb") as f:
            os.fsync(f.fileno())  # the data is on disk before the rename makes it visible

    atomic_write(path, write)
    directory_fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(directory_fd)  # and so is the rename
    finally:
        os.close(directory_fd)


class CheckpointManager:
    """``step_<global step>.ckpt`` every so often (the last ``keep`` kept) and ``best.ckpt``."""

    def __init__(self, directory, keep):
        self.directory = directory
        self.keep = keep

    def periodic_checkpoints(self):
        """Periodic checkpoints in ``directory``, oldest first."""
        if not os.path.isdir(self.directory):
            return []
        found = [(int(match.group(1)), name) for name in os.listdir(self.directory)
                 if (match := _PERIODIC.match(name))]
        return [os.path.join(self.directory, name) for _, name in sorted(found)]

    def latest(self):
        checkpoints = self.periodic_checkpoints()
        return checkpoints[-1] if checkpoints else None

    def save(self, train_step, state):
        path = os.path.join(self.directory, f"step_{state.global_step:08d}.ckpt")
        atomic_save_checkpoint(train_step, path, state.to_append_dict())
        for old in self.periodic_checkpoints()[:-self.keep]:
            os.remove(old)
        _logger.info("saved %s", path)
        return path

    def save_best(self, train_step, state):
        path = os.path.join(self.directory, BEST_NAME)
        atomic_save_checkpoint(train_step, path, state.to_append_dict())
        _logger.info("saved %s (last-exit top-1 %.2f%%)", path, state.best_top1)
        return path


def _read(path):
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        return ms.load_checkpoint(path, crc_check=True)
    except (ValueError, RuntimeError) as error:
        raise CheckpointError(f"cannot read checkpoint {path}: {error}") from None


def load_training_checkpoint(train_step, path):
    """Restore model, optimizer, EMA and loss scale into ``train_step``; return the ``TrainingState``."""
    params = _read(path)
    state = TrainingState.pop_from(params, path)
    expected = {param.name for param in train_step.get_parameters()} - set(_NOT_SAVED)
    missing = sorted(expected - set(params))
    if missing:
        raise CheckpointError(f"{path} lacks {len(missing)} of this run's parameters (e.g. {missing[:3]}); "
                              "was it written with different model, optimizer or ema settings?")
    _check_shapes(train_step, params, path)
    ms.load_param_into_net(train_step, params, strict_load=True)
    return state


def _check_shapes(cell, params, path):
    for param in cell.get_parameters():
        value = params.get(param.name)
        if value is not None and tuple(value.shape) != tuple(param.shape):
            raise CheckpointError(f"{path}: parameter {param.name} has shape {tuple(value.shape)}, "
                                  f"the model expects {tuple(param.shape)}")


def load_pretrained(model, path):
    """Initialise ``model`` from a converted checkpoint; heads stay freshly initialised when the
    checkpoint's class count differs from the model's."""
    params = _read(path)
    model_params = {param.name: param for param in model.get_parameters()}
    fresh_heads = sorted(name for name in model_params if _HEAD.match(name) and name in params
                         and tuple(params[name].shape) != tuple(model_params[name].shape))
    if fresh_heads:
        _logger.info("%s: %d classes in the checkpoint, %d in the model: classifier heads start fresh",
                     path, params[fresh_heads[0]].shape[0], model_params[fresh_heads[0]].shape[0])
    weights = {name: value for name, value in params.items() if name in model_params and name not in fresh_heads}
    missing = sorted(set(model_params) - set(weights) - set(fresh_heads))
    if missing:
        raise CheckpointError(f"{path} lacks {len(missing)} parameters of the model (e.g. {missing[:3]}); "
                              "is it a checkpoint of this architecture?")
    _check_shapes(model, weights, path)
    ms.load_param_into_net(model, weights, strict_load=True)
    _logger.info("initialised the model from %s", path)


def load_model_weights(model, path, use_ema=True):
    """Load a converted or a training checkpoint into ``model`` for evaluation or export: its EMA
    weights when it has them and ``use_ema``. Every model parameter must be there with its shape.
    Returns whether the EMA weights were used."""
    params = _read(path)
    prefix = _EMA_PREFIX if use_ema and any(name.startswith(_EMA_PREFIX) for name in params) else ""
    weights = {param.name: params[prefix + param.name] for param in model.get_parameters()
               if prefix + param.name in params}
    missing = sorted(set(param.name for param in model.get_parameters()) - set(weights))
    if missing:
        raise CheckpointError(f"{path} lacks {len(missing)} parameters of the model (e.g. "
                              f"{[prefix + name for name in missing[:3]]}); is it a checkpoint of this architecture?")
    _check_shapes(model, weights, path)
    ms.load_param_into_net(model, weights, strict_load=True)
    _logger.info("loaded the %s weights of %s", "EMA" if prefix else "model", path)
    return bool(prefix)
