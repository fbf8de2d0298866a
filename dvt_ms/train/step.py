"""One optimisation step of a DVT cascade, compiled into a single graph.

The training objective is the sum of the K exits' losses. The step returns every exit's loss
(averaged over ranks under data parallel) so the loop can log them, and whether the update was
applied (gradients finite).

Order inside the step: forward and backward with the loss scale, gradient averaging across ranks
(data parallel), unscaling, finite check and loss-scale update, clipping of the averaged
gradients, optimizer update and EMA -- the last two only when the gradients are finite, so a
non-finite step never reaches the weights.
"""
import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops

__all__ = ["ExitLosses", "TrainStep"]

_unscale = ops.MultitypeFuncGraph("unscale")
_ema_update = ops.MultitypeFuncGraph("ema_update")


@_unscale.register("Tensor", "Tensor")
def _unscale_grad(inverse_scale, grad):
    return grad * ops.cast(inverse_scale, grad.dtype)


@_ema_update.register("Tensor", "Tensor", "Tensor")
def _ema_update_param(decay, ema, weight):
    return ops.assign(ema, ema * decay + weight * (1.0 - decay))


class ExitLosses(nn.Cell):
    """``(images, labels) -> (K,)`` float32 losses, one per exit, of a model returning K logits."""

    def __init__(self, model, loss_fn):
        super().__init__(auto_prefix=False)  # keep the model's parameter names (stages.*)
        self.model = model
        self.loss_fn = loss_fn

    def construct(self, images, labels):
        logits = self.model(images)
        losses = ()
        for exit_logits in logits:
            # Logits may be half precision under mixed precision; the loss is always float32.
            losses += (self.loss_fn(ops.cast(exit_logits, ms.float32), labels),)
        return ops.stack(losses)


class TrainStep(nn.TrainOneStepCell):
    """``(images, labels) -> (exit losses, applied)``.

    ``loss_scale_type``: none, fixed (constant ``loss_scale``) or dynamic (start at ``loss_scale``,
    halve on overflow, double after 2000 clean steps). ``ema_decay`` None disables the EMA; its
    copies of the model's parameters are named ``ema.<name>``. The gradient reducer for data
    parallel comes from ``nn.TrainOneStepCell``.
    """

    def __init__(self, exit_losses, optimizer, loss_scale_type="none", loss_scale=1.0,
                 clip_grad_norm=None, ema_decay=None):
        super().__init__(exit_losses, optimizer)
        initial_scale = 1.0 if loss_scale_type == "none" else float(loss_scale)
        self.loss_scale = Parameter(Tensor(initial_scale, ms.float32), name="loss_scale", requires_grad=False)
        self.scale_update = (nn.DynamicLossScaleUpdateCell(initial_scale, scale_factor=2, scale_window=2000)
                             if loss_scale_type == "dynamic" else None)
        self.clip_grad_norm = clip_grad_norm
        self.use_ema = ema_decay is not None
        if self.use_ema:
            self.ema_decay = Tensor(ema_decay, ms.float32)
            self.model_params = ms.ParameterTuple(list(exit_losses.model.get_parameters()))
            self.ema_params = self.model_params.clone(prefix="ema", init="same")
        self.hyper_map = ops.HyperMap()
        if self.reducer_flag:  # data parallel (set up by nn.TrainOneStepCell)
            self.loss_all_reduce = ops.AllReduce()

    def construct(self, images, labels):
        losses = self.network(images, labels)
        scale = self.loss_scale
        sens = ops.ones_like(losses) * ops.cast(scale, losses.dtype)  # d(scale * sum of exit losses)
        grads = self.grad(self.network, self.weights)(images, labels, sens)
        grads = self.grad_reducer(grads)
        grads = self.hyper_map(ops.partial(_unscale, ops.reciprocal(scale)), grads)
        # Reduced gradients are identical on every rank, so all ranks take the same decision.
        finite = ms.amp.all_finite(grads)
        if self.scale_update is not None:
            self.scale_update(scale, ops.logical_not(finite))
        if self.clip_grad_norm is not None:
            grads = ops.clip_by_global_norm(grads, self.clip_grad_norm)
        if finite:
            losses = ops.depend(losses, self.optimizer(grads))
            if self.use_ema:
                losses = ops.depend(losses, self.hyper_map(ops.partial(_ema_update, self.ema_decay),
                                                           self.ema_params, self.model_params))
        if self.reducer_flag:
            # Every rank reports (and acts on) the mean over all ranks, e.g. all stop on a NaN together.
            losses = self.loss_all_reduce(losses) / self.degree
        return losses, finite
