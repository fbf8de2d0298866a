"""AdamW per device: MindSpore's fused kernel (one per parameter tensor) where the device has it,
mindcv's AdamW elsewhere; the same update rule, the run's per-step learning rates.

Both compute decoupled AdamW with bias correction (Loshchilov & Hutter; PyTorch's ``AdamW``):
m ← β1·m + (1-β1)·g, v ← β2·v + (1-β2)·g², θ ← θ - lr·(m̂/(√v̂ + eps) + wd·θ). mindcv's is
15-20 element-wise kernels per tensor (benchmarks/graph_kernels.py); ``mint.optim.AdamW`` is one
``AdamW`` kernel, registered for Ascend only in MindSpore 2.10 (no CPU or GPU kernel).
"""
import numpy as np
import mindspore as ms
from mindcv.optim.adamw import AdamW as MindcvAdamW
from mindspore import Parameter, Tensor, mint, nn, ops

__all__ = ["fused_adamw_available", "FusedAdamW", "create_adamw"]


def fused_adamw_available(device):
    """Whether ``device`` has MindSpore's fused AdamW kernel (2.10: Ascend only)."""
    return device == "Ascend"


class FusedAdamW(nn.Cell):
    """``(gradients) -> True``: ``mint.optim.AdamW`` over ``groups`` (``{"params", "weight_decay"}``
    dicts) at ``learning_rates[step]`` (one per step; the last one repeats), set on the device
    before each update, so the host never touches the learning rate."""

    def __init__(self, groups, learning_rates, betas=(0.9, 0.999), eps=1e-8):
        super().__init__()
        groups = [{"params": list(group["params"]), "weight_decay": float(group["weight_decay"])} for group in groups]
        self.optimizer = mint.optim.AdamW(groups, lr=float(learning_rates[0]), betas=tuple(betas), eps=float(eps))
        self.parameters = self.optimizer.parameters
        self.learning_rates = Tensor(np.asarray(learning_rates, np.float32))
        self.last_step = Tensor(len(learning_rates) - 1, ms.int32)
        self.step = Parameter(Tensor(0, ms.int32), name="fused_adamw_step", requires_grad=False)

    def construct(self, gradients):
        lr = self.learning_rates[ops.minimum(self.step, self.last_step)]
        for group_lr in self.optimizer.lrs:
            ops.assign(group_lr, lr)
        ops.assign_add(self.step, ops.ones_like(self.step))
        return self.optimizer(gradients)


def create_adamw(device, groups, learning_rates, betas=(0.9, 0.999), eps=1e-8):
    """The AdamW for ``device``: ``FusedAdamW`` where the kernel exists, else mindcv's ``AdamW`` with
    the same groups (``{"params", "weight_decay"}`` dicts, and optionally MindSpore's
    ``{"order_params"}``, which mindcv's keeps) and per-step learning rates. Their
    optimizer states are named differently: a checkpoint resumes on a device of the same kind."""
    order = next((group["order_params"] for group in groups if "order_params" in group), None)
    groups = [group for group in groups if "params" in group]
    if fused_adamw_available(device):
        return FusedAdamW(groups, learning_rates, betas, eps)
    params = [{"params": list(group["params"]), "weight_decay": float(group["weight_decay"])} for group in groups]
    params.append({"order_params": list(order) if order is not None else
                   [param for group in groups for param in group["params"]]})
    return MindcvAdamW(params, learning_rate=list(map(float, learning_rates)), beta1=float(betas[0]),
                       beta2=float(betas[1]), eps=float(eps))
