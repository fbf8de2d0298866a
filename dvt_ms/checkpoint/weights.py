"""Model weights from a checkpoint: a converted published one or one written by training.

Training checkpoints keep the model's parameters under their plain names (``stages.*``) and the
EMA copies as ``ema.<name>``, so either kind initialises a model.

One rule for which weights a checkpoint gives (``model_weights``): its EMA copies when it has them,
else its plain weights, for fine-tuning (``pretrained``), calibration, evaluation and export alike.
(``use_ema=False`` asks for the plain ones explicitly.)
"""
import logging
import re

import mindspore as ms

from ..errors import CheckpointError
from .store import check_shapes, read_checkpoint

__all__ = ["EMA_PREFIX", "load_pretrained", "load_model_weights", "model_weights"]

_logger = logging.getLogger(__name__)

_HEAD = re.compile(r"^stages\.\d+\.head\.(weight|bias)$")
EMA_PREFIX = "ema."   # the training step's names for the EMA copies of the model's parameters


def model_weights(params, use_ema=True):
    """``(weights by model parameter name, whether they are the EMA copies)`` of a read checkpoint:
    the EMA copies when it has them and ``use_ema``, else its plain weights."""
    if use_ema and any(name.startswith(EMA_PREFIX) for name in params):
        return {name[len(EMA_PREFIX):]: value for name, value in params.items() if name.startswith(EMA_PREFIX)}, True
    return {name: value for name, value in params.items() if not name.startswith(EMA_PREFIX)}, False


def load_pretrained(model, path):
    """Initialise ``model`` from a converted or training checkpoint (its EMA weights when it has
    them); heads stay freshly initialised when the checkpoint's class count differs from the model's."""
    params, ema = model_weights(read_checkpoint(path))
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
    check_shapes(model, weights, path)
    ms.load_param_into_net(model, weights, strict_load=True)
    _logger.info("initialised the model from the %s weights of %s", "EMA" if ema else "model", path)


def load_model_weights(model, path, use_ema=True):
    """Load a converted or a training checkpoint into ``model`` for evaluation or export: its EMA
    weights when it has them and ``use_ema``. Every model parameter must be there with its shape.
    Returns whether the EMA weights were used."""
    params, ema = model_weights(read_checkpoint(path), use_ema)
    prefix = EMA_PREFIX if ema else ""
    weights = {param.name: params[param.name] for param in model.get_parameters() if param.name in params}
    missing = sorted(set(param.name for param in model.get_parameters()) - set(weights))
    if missing:
        raise CheckpointError(f"{path} lacks {len(missing)} parameters of the model (e.g. "
                              f"{[prefix + name for name in missing[:3]]}); is it a checkpoint of this architecture?")
    check_shapes(model, weights, path)
    ms.load_param_into_net(model, weights, strict_load=True)
    _logger.info("loaded the %s weights of %s", "EMA" if ema else "model", path)
    return ema
