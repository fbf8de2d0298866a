"""Training checkpoints: everything a killed run needs to continue, kept last-k plus best.

A training checkpoint holds the model, the optimizer state, the EMA weights, the loss scale, and
where training stood (epoch, batches consumed in that epoch, global step, best accuracy). Model
parameters keep their plain names (``stages.*``), so a training checkpoint also works as
``pretrained`` and for calibration and export.
"""
import dataclasses
import logging
import os
import re

import mindspore as ms

from ..checkpoint.store import NOT_SAVED, atomic_save_checkpoint, check_shapes, read_checkpoint
from ..errors import CheckpointError

__all__ = ["BEST_NAME", "TrainingState", "CheckpointManager", "load_training_checkpoint", "step_of"]

_logger = logging.getLogger(__name__)

_PERIODIC = re.compile(r"^step_(\d+)\.ckpt$")
BEST_NAME = "best.ckpt"
_STATE_PREFIX = "training_state."


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


def step_of(path):
    """The global step of a periodic checkpoint ``step_<n>.ckpt``; -1 for any other file."""
    match = _PERIODIC.match(os.path.basename(path))
    return int(match.group(1)) if match else -1


def _transient_names(cell):
    """Parameters a cell recomputes or resets on every start (the train step's monitor)."""
    return getattr(cell, "transient_names", ())


class CheckpointManager:
    """``step_<global step>.ckpt`` every so often (the last ``keep`` kept) and ``best.ckpt``.

    The run folder belongs to one run (``run_folder``); still, rotation only ever removes
    checkpoints of earlier steps than the one just saved, never a later one."""

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
        atomic_save_checkpoint(train_step, path, state.to_append_dict(), skip=_transient_names(train_step))
        earlier = [old for old in self.periodic_checkpoints() if step_of(old) < state.global_step]
        for old in earlier[:max(len(earlier) - (self.keep - 1), 0)]:
            os.remove(old)
        _logger.info("saved %s", path)
        return path

    def save_best(self, train_step, state):
        path = os.path.join(self.directory, BEST_NAME)
        atomic_save_checkpoint(train_step, path, state.to_append_dict(), skip=_transient_names(train_step))
        _logger.info("saved %s (last-exit top-1 %.2f%%)", path, state.best_top1)
        return path


def load_training_checkpoint(train_step, path):
    """Restore model, optimizer, EMA and loss scale into ``train_step``; return the ``TrainingState``."""
    params = read_checkpoint(path)
    state = TrainingState.pop_from(params, path)
    not_saved = set(NOT_SAVED) | set(_transient_names(train_step))
    expected = {param.name for param in train_step.get_parameters()} - not_saved
    missing = sorted(expected - set(params))
    if missing:
        raise CheckpointError(f"{path} lacks {len(missing)} of this run's parameters (e.g. {missing[:3]}); "
                              "was it written with different model, optimizer or ema settings?")
    check_shapes(train_step, params, path)
    ms.load_param_into_net(train_step, params, strict_load=True)
    return state
