"""One optimisation step of a DVT cascade, compiled into a single graph.

The training objective is the sum of the K exits' losses. The step returns every exit's loss
(averaged over ranks under data parallel) and whether the update was applied, as device tensors
the loop does not read: what the loop needs is accumulated on the device (``StepMonitor``) and
read back only at the logging cadence, so the host never waits for a step to finish.

Order inside the step: forward and backward with the loss scale, gradient averaging across ranks
(data parallel), unscaling, finite check and loss-scale update, clipping of the averaged
gradients, optimizer update and EMA -- the last two only when the gradients and the losses are
finite. A non-finite step is skipped: nothing reaches the weights, dynamic loss scaling halves the
scale, the skip is counted. Only a streak of ``max_skipped_steps`` consecutive skips halts the
step (no update after it, whatever follows) for the loop to stop the run.
"""
import dataclasses

import mindspore as ms
import numpy as np
from mindspore import Parameter, Tensor, nn, ops

__all__ = ["ExitLosses", "MonitorReport", "TrainStep"]

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


@dataclasses.dataclass
class MonitorReport:
    """What the device accumulated since the last reset (``TrainStep.read_monitor``)."""

    steps: int                  # steps run
    mean_losses: list           # per exit, over the steps with finite losses
    skipped: int                # steps whose update was not applied
    non_finite_steps: int       # steps with a non-finite loss (skipped)
    first_non_finite: int       # 1-based step (within the window) of the first non-finite loss; 0 = none
    non_finite_losses: list     # that step's exit losses
    halted_at: int              # 1-based step (within the window) that made the streak max_skipped_steps
                                # long; 0 = not halted. No update was applied since the streak began.
    consecutive_skipped: int    # length of the current streak of skipped steps (across windows)


class TrainStep(nn.TrainOneStepCell):
    """``(images, labels) -> (exit losses, applied)`` of the DVT cascade ``exit_losses`` wraps.

    ``loss_scale_type``: none, fixed (constant ``loss_scale``) or dynamic (start at ``loss_scale``,
    halve on overflow or a non-finite loss, double after 2000 clean steps). ``ema_decay`` None
    disables the EMA; its copies of the model's parameters are named ``ema.<name>``. The gradient
    reducer for data parallel comes from ``nn.TrainOneStepCell``. ``max_skipped_steps``
    consecutive skipped steps halt the step: no update from then on. The ``monitor.*`` parameters
    accumulate, on the device, the steps, losses, skipped updates and non-finite losses since
    ``read_monitor(reset=True)``, one loss per exit (``num_exits``; counted from the cascade's
    ``stages.<k>`` parameters when not given), and the current streak of skips and the halt (kept
    across resets); they are not saved in checkpoints (``transient_names``).
    """

    def __init__(self, exit_losses, optimizer, loss_scale_type="none", loss_scale=1.0,
                 clip_grad_norm=None, ema_decay=None, num_exits=None, max_skipped_steps=1):
        super().__init__(exit_losses, optimizer)
        if num_exits is None:   # the cascade's stages.<k>.* parameters (mixed precision may wrap the model)
            num_exits = len({param.name.split(".")[1] for param in exit_losses.get_parameters()
                             if param.name.startswith("stages.")})
        self.monitor_steps = Parameter(Tensor(0, ms.int32), name="monitor.steps", requires_grad=False)
        self.monitor_loss_sum = Parameter(Tensor(np.zeros(num_exits, np.float32)), name="monitor.loss_sum",
                                          requires_grad=False)
        self.monitor_skipped = Parameter(Tensor(0, ms.int32), name="monitor.skipped", requires_grad=False)
        self.monitor_first_bad = Parameter(Tensor(0, ms.int32), name="monitor.first_non_finite",
                                           requires_grad=False)
        self.monitor_bad_losses = Parameter(Tensor(np.zeros(num_exits, np.float32)),
                                            name="monitor.non_finite_losses", requires_grad=False)
        self.monitor_bad_steps = Parameter(Tensor(0, ms.int32), name="monitor.non_finite_steps", requires_grad=False)
        self.monitor_halted_at = Parameter(Tensor(0, ms.int32), name="monitor.halted_at", requires_grad=False)
        self.monitor_streak = Parameter(Tensor(0, ms.int32), name="monitor.consecutive_skipped", requires_grad=False)
        self.max_skipped_steps = Tensor(max_skipped_steps, ms.int32)
        self.transient_names = tuple(param.name for param in self._monitor_params() + self._streak_params())
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

    def _monitor_params(self):
        """What a window accumulates (reset by ``read_monitor(reset=True)``)."""
        return (self.monitor_steps, self.monitor_loss_sum, self.monitor_skipped, self.monitor_first_bad,
                self.monitor_bad_losses, self.monitor_bad_steps, self.monitor_halted_at)

    def _streak_params(self):
        """What outlives a window: the current streak of skipped steps."""
        return (self.monitor_streak,)

    def read_monitor(self, reset):
        """The device's accumulated ``MonitorReport`` (one device-to-host copy per value);
        ``reset`` starts a new window."""
        values = [param.asnumpy() for param in self._monitor_params()]
        steps, loss_sum, skipped, first_bad, bad_losses, bad_steps, halted_at = values
        finite_steps = max(int(steps) - int(bad_steps), 1)
        report = MonitorReport(int(steps), (loss_sum / finite_steps).tolist(), int(skipped), int(bad_steps),
                               int(first_bad), bad_losses.tolist(), int(halted_at), int(self.monitor_streak.asnumpy()))
        if reset:
            for param, value in zip(self._monitor_params(), values):
                param.set_data(Tensor(np.zeros_like(value)))
        return report

    def construct(self, images, labels):
        losses = self.network(images, labels)
        if self.reducer_flag:
            # Every rank decides (and reports) on the mean over all ranks: all stop on a NaN together.
            mean_losses = self.loss_all_reduce(losses) / self.degree
        else:
            mean_losses = losses
        scale = self.loss_scale
        sens = ops.ones_like(losses) * ops.cast(scale, losses.dtype)  # d(scale * sum of exit losses)
        grads = self.grad(self.network, self.weights)(images, labels, sens)
        grads = self.grad_reducer(grads)
        grads = self.hyper_map(ops.partial(_unscale, ops.reciprocal(scale)), grads)
        # Reduced gradients are identical on every rank, so all ranks take the same decision.
        finite = ms.amp.all_finite(grads)
        losses_finite = ops.isfinite(mean_losses).all()
        good = ops.logical_and(finite, losses_finite)
        if self.scale_update is not None:
            self.scale_update(scale, ops.logical_not(good))
        if self.clip_grad_norm is not None:
            grads = ops.clip_by_global_norm(grads, self.clip_grad_norm)
        halted = self.monitor_streak >= self.max_skipped_steps
        apply = ops.logical_and(good, ops.logical_not(halted))
        if apply:
            mean_losses = ops.depend(mean_losses, self.optimizer(grads))
            if self.use_ema:
                mean_losses = ops.depend(mean_losses, self.hyper_map(ops.partial(_ema_update, self.ema_decay),
                                                                     self.ema_params, self.model_params))
        self._monitor(mean_losses, losses_finite, apply, halted)
        return mean_losses, apply

    def _monitor(self, losses, losses_finite, applied, halted):
        """Accumulate on the device what the loop reads at its logging cadence."""
        steps = self.monitor_steps + 1
        newly_bad = ops.logical_and(ops.logical_not(losses_finite), self.monitor_first_bad == 0)
        streak = ops.where(applied, ops.zeros_like(self.monitor_streak),
                           self.monitor_streak + ops.logical_not(halted).astype(ms.int32))
        newly_halted = ops.logical_and(ops.logical_not(halted), streak >= self.max_skipped_steps)
        ops.assign(self.monitor_steps, steps)
        ops.assign(self.monitor_loss_sum,
                   self.monitor_loss_sum + ops.where(losses_finite, losses, ops.zeros_like(losses)))
        ops.assign(self.monitor_skipped, self.monitor_skipped + 1 - applied.astype(ms.int32))
        ops.assign(self.monitor_bad_steps, self.monitor_bad_steps + ops.logical_not(losses_finite).astype(ms.int32))
        ops.assign(self.monitor_first_bad, ops.where(newly_bad, steps, self.monitor_first_bad))
        ops.assign(self.monitor_bad_losses, ops.where(newly_bad, losses, self.monitor_bad_losses))
        ops.assign(self.monitor_halted_at, ops.where(newly_halted, steps, self.monitor_halted_at))
        ops.assign(self.monitor_streak, streak)
