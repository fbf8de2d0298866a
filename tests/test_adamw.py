"""AdamW per device: the update rule against a NumPy AdamW, and the fused optimizer's wrapping
(groups, per-step learning rates, step count) against mindcv's on CPU, with the Ascend-only kernel
replaced by its documented formula."""
import numpy as np
import mindspore as ms
from mindspore import nn, ops

from dvt_ms.train.adamw import FusedAdamW, create_adamw, fused_adamw_available

LEARNING_RATES = [0.1, 0.05, 0.02, 0.01]   # one per step, as the trainer gives them
BETAS, EPS = (0.9, 0.99), 1e-6


class _Step(nn.Cell):
    """One update of ``optimizer`` with fixed gradients."""

    def __init__(self, optimizer):
        super().__init__()
        self.optimizer = optimizer

    def construct(self, gradients):
        return self.optimizer(gradients)


def _groups(seed=0):
    rng = np.random.default_rng(seed)
    decayed = ms.Parameter(ms.Tensor(rng.standard_normal((3, 4)).astype(np.float32)), name="dense.weight")
    kept = ms.Parameter(ms.Tensor(rng.standard_normal(4).astype(np.float32)), name="dense.bias")
    return [{"params": [decayed], "weight_decay": 0.5}, {"params": [kept], "weight_decay": 0.0}]


def _gradients(step):
    rng = np.random.default_rng(100 + step)
    return (rng.standard_normal((3, 4)).astype(np.float32), rng.standard_normal(4).astype(np.float32))


def _numpy_adamw(values, decays, steps):
    """Decoupled AdamW with bias correction (PyTorch's AdamW) in float64."""
    values = [v.astype(np.float64) for v in values]
    m = [np.zeros_like(v) for v in values]
    v2 = [np.zeros_like(v) for v in values]
    for t in range(1, steps + 1):
        lr = LEARNING_RATES[min(t - 1, len(LEARNING_RATES) - 1)]
        for i, grad in enumerate(_gradients(t - 1)):
            m[i] = BETAS[0] * m[i] + (1 - BETAS[0]) * grad
            v2[i] = BETAS[1] * v2[i] + (1 - BETAS[1]) * grad * grad
            m_hat, v_hat = m[i] / (1 - BETAS[0] ** t), v2[i] / (1 - BETAS[1] ** t)
            values[i] = values[i] - lr * (m_hat / (np.sqrt(v_hat) + EPS) + decays[i] * values[i])
    return values


def _run(optimizer, groups, steps):
    step = _Step(optimizer)
    for t in range(steps):
        step(tuple(ms.Tensor(g) for g in _gradients(t)))
    return [group["params"][0].asnumpy() for group in groups]


def test_cpu_and_gpu_take_mindcv_adamw_and_it_is_decoupled_adamw():
    assert not fused_adamw_available("CPU") and not fused_adamw_available("GPU") and fused_adamw_available("Ascend")
    groups = _groups()
    initial = [group["params"][0].asnumpy().copy() for group in groups]
    optimizer = create_adamw("CPU", groups, LEARNING_RATES, BETAS, EPS)
    assert not isinstance(optimizer, FusedAdamW)
    for got, want in zip(_run(optimizer, groups, 4), _numpy_adamw(initial, [0.5, 0.0], 4)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def _documented_adamw_kernel(var, m, v, max_v, grad, step, lr, beta1, beta2, decay, eps, amsgrad, maximize):
    """MindSpore's AdamW primitive as its documentation states it, ``step`` counted from 0 as
    ``mint.optim.AdamW`` passes it (its state starts at -1 and is incremented before the call)."""
    t = ops.cast(step, ms.float32) + 1
    ops.assign(var, var * (1 - lr * decay))
    ops.assign(m, m * beta1 + grad * (1 - beta1))
    ops.assign(v, v * beta2 + grad * grad * (1 - beta2))
    m_hat = m / (1 - ops.pow(beta1, t))
    v_hat = v / (1 - ops.pow(beta2, t))
    return ops.assign(var, var - lr * m_hat / (ops.sqrt(v_hat) + eps))


def test_fused_adamw_routes_groups_and_per_step_learning_rates_like_mindcv():
    """The kernel itself runs on Ascend only (the device self-check compares it there)."""
    groups = _groups()
    initial = [group["params"][0].asnumpy().copy() for group in groups]
    fused = FusedAdamW(groups, LEARNING_RATES, BETAS, EPS)
    fused.optimizer.adamw_opt = _documented_adamw_kernel
    got = _run(fused, groups, 4)
    assert int(fused.step.asnumpy()) == 4
    for got_value, want in zip(got, _numpy_adamw(initial, [0.5, 0.0], 4)):
        np.testing.assert_allclose(got_value, want, rtol=1e-5, atol=1e-6)
