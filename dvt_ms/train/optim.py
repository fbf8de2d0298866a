"""The optimizer and the learning-rate curve of a run, as the published recipe builds them.

The authors trained with timm 0.3's ``create_optimizer`` / ``create_scheduler`` (their ``main.py``;
docs/training.md). What that means here:

* **Weight decay** applies to every trainable parameter except those a filter exempts
  (``weight_decay_filter``). ``ndim1_and_bias`` is the authors': 1-D parameters (LayerNorm
  scales and shifts, biases) and names ending in ``.bias``, nothing else -- timm would also exempt
  the model's ``no_weight_decay()`` names, but the DVT wrapper models define none, so class tokens
  and position embeddings are decayed. ``norm_and_bias`` (mindcv's filter: norms, biases and
  ``DVT.no_weight_decay``, i.e. class tokens and position embeddings), ``auto`` (MindSpore's:
  LayerNorm ``gamma``/``beta`` only) and ``disable`` remain for other recipes.
* **AdamW** is PyTorch's: betas (0.9, 0.999) and eps 1e-8 (``opt_betas``, ``opt_eps``), decoupled
  decay ``p -= lr * (wd * p + m_hat / (sqrt(v_hat) + eps))``; mindcv's ``AdamW`` computes exactly
  this. It is built directly because mindcv's ``create_optimizer`` cannot set its eps (the factory
  hands its ``eps`` argument to RMSProp only); the other optimizers come from that factory, given
  the parameter groups built here.
* **The learning-rate curve** is timm's ``CosineLRScheduler`` over ``epochs`` with the warm-up
  overlapping its start, then ``cooldown_epochs`` at ``min_lr`` (``learning_rates``).
"""
from mindcv.optim import create_optimizer as mindcv_optimizer
from .adamw import create_adamw
from mindcv.scheduler.dynamic_lr import cosine_decay_lr, cosine_decay_refined_lr, linear_lr, linear_refined_lr

__all__ = ["WEIGHT_DECAY_FILTERS", "create_optimizer", "learning_rates", "weight_decay_groups"]


def _ndim1_and_bias(param, listed):
    return param.ndim == 1 or param.name.endswith(".bias")


def _norm_and_bias(param, listed):
    return any(part in param.name for part in ("beta", "gamma", "bias")) or param.name in listed


def _mindspore_norms(param, listed):
    return "beta" in param.name or "gamma" in param.name


def _nothing(param, listed):
    return False


# weight_decay_filter -> whether a trainable parameter is exempt, given the names the model lists
# in ``no_weight_decay()``
WEIGHT_DECAY_FILTERS = {
    "ndim1_and_bias": _ndim1_and_bias,    # the authors' (timm 0.3 add_weight_decay, no skip list)
    "norm_and_bias": _norm_and_bias,      # mindcv's init_group_params with the model's no_weight_decay()
    "auto": _mindspore_norms,             # mindspore.nn.Optimizer's own filter
    "disable": _nothing,
}


def weight_decay_groups(model, weight_decay, weight_decay_filter):
    """MindSpore parameter groups of ``model``'s trainable parameters: decayed, exempt, and their order."""
    is_exempt = WEIGHT_DECAY_FILTERS[weight_decay_filter]
    listed = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    params = model.trainable_params()
    exempt = [is_exempt(param, listed) for param in params]
    return [{"params": [p for p, spared in zip(params, exempt) if not spared], "weight_decay": weight_decay},
            {"params": [p for p, spared in zip(params, exempt) if spared], "weight_decay": 0.0},
            {"order_params": params}]


def create_optimizer(model, config, lr_per_step, device="CPU"):
    """The optimizer ``config`` asks for over ``model``'s trainable parameters, one learning rate per step.

    AdamW is the device's: MindSpore's fused kernel where ``device`` has it, else mindcv's (``adamw.py``)."""
    groups = weight_decay_groups(model, config.weight_decay, config.weight_decay_filter)
    if config.opt == "adamw":
        return create_adamw(device, groups, lr_per_step, config.opt_betas, config.opt_eps)
    # Groups carry their weight decay; mindcv passes them through untouched only with its "auto" filter.
    return mindcv_optimizer(groups, config.opt, lr=lr_per_step, weight_decay_filter="auto")


def learning_rates(config, steps_per_epoch):
    """The learning rate of every step of ``epochs + cooldown_epochs`` epochs (timm's ``CosineLRScheduler``).

    Epoch t < warmup_epochs: warmup_lr + t (lr - warmup_lr) / warmup_epochs. Then, ``cosine_decay``:
    min_lr + (lr - min_lr) (1 + cos(pi t / epochs)) / 2, the cosine running over all ``epochs`` so that
    the warm-up overlaps its start; ``constant``: lr. Cool-down epochs (t >= epochs) at min_lr (cosine)
    or lr (constant). ``lr_epoch_stair`` (the recipe's) holds t at the epoch for all of its steps, as
    timm steps it once per epoch; without it t advances by 1 / steps_per_epoch every step.
    """
    per_epoch = config.lr_epoch_stair
    num_epochs = config.epochs + config.cooldown_epochs
    if config.scheduler == "cosine_decay":
        cosine = cosine_decay_lr if per_epoch else cosine_decay_refined_lr
        rates = cosine(decay_epochs=config.epochs, eta_min=config.min_lr, eta_max=config.lr,
                       steps_per_epoch=steps_per_epoch, epochs=num_epochs)
    else:
        rates = [config.lr] * (steps_per_epoch * num_epochs)
    if config.warmup_epochs:
        linear = linear_lr if per_epoch else linear_refined_lr
        warmup = linear(start_factor=config.warmup_lr / config.lr if config.lr else 0.0, end_factor=1.0,
                        total_iters=config.warmup_epochs, lr=config.lr, steps_per_epoch=steps_per_epoch,
                        epochs=config.warmup_epochs)
        rates[:len(warmup)] = warmup
    return rates
