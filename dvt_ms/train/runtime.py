"""Where and how a run executes: device, graph mode, data-parallel ranks and numeric precision.

Every device-specific choice is resolved here from the config's ``auto`` switches, so the rest of
the training code is the same on Ascend, GPU and CPU.
"""
import dataclasses
import logging
import os

import mindspore as ms
import numpy as np
from mindspore import nn, ops
from mindspore.communication import get_group_size, get_rank, init

from ..device import auto_cpu_refusal, set_float32_precision, use_device
from ..errors import ConfigError
from ..models.layers import use_device_kernels

__all__ = ["Runtime", "jit_level_for", "setup_runtime", "sum_over_ranks", "gather_from_ranks"]

_logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Runtime:
    device_target: str
    rank: int
    world_size: int
    amp_level: str          # O0 (fp32) .. O3
    amp_dtype: object       # ms.float16 or ms.bfloat16 (unused at O0)
    loss_scale_type: str    # none | fixed | dynamic
    jit_level: str = "O0"   # the train step's compile level (jit_level_for)
    device_automatic: bool = False  # device_target was auto (chosen here, not written in the config)

    @property
    def is_main(self):
        """Rank 0 writes checkpoints and logs for everyone (all ranks hold the same weights)."""
        return self.rank == 0

    @property
    def distributed(self):
        return self.world_size > 1


def _launched_ranks():
    """World size set by msrun (MS_WORKER_NUM) or a rank-table launch (RANK_SIZE); 1 otherwise."""
    return int(os.environ.get("MS_WORKER_NUM", os.environ.get("RANK_SIZE", "1")))


def jit_level_for(device):
    """O1 (MindSpore's operator fusion: the optimizer's, the loss scaling's and the exact GELU's
    element-wise kernels merged) on Ascend; O0 elsewhere: on CPU O1 gains nothing (measured), on GPU
    it is not measured yet."""
    return "O1" if device == "Ascend" else "O0"


def setup_runtime(config):
    """Set MindSpore's context for ``config`` and join the data-parallel group if launched as one."""
    launched = _launched_ranks()
    choice = use_device(config.device_target)
    device = choice.device
    if choice.automatic and device == "CPU" and launched > 1:
        # 8 msrun ranks training on the host CPU is never what the user meant.
        raise ConfigError(auto_cpu_refusal(f"a data-parallel run of {launched} workers"))
    set_float32_precision(device, config.fast_float32)
    use_device_kernels(device)
    rank, world_size = 0, 1
    if launched > 1:
        init()
        rank, world_size = get_rank(), get_group_size()
        ms.reset_auto_parallel_context()
        ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL, gradients_mean=True,
                                     device_num=world_size)

    amp_level = config.amp_level
    if amp_level == "auto":
        # fp32 on CPU (no fast half-precision kernels); the published mixed precision elsewhere.
        amp_level = "O0" if device == "CPU" else "O2"
    amp_dtype = ms.bfloat16 if config.amp_dtype == "bfloat16" else ms.float16
    loss_scale_type = config.loss_scale_type
    if loss_scale_type == "auto":
        # float16 gradients underflow without scaling; bfloat16 has float32's range.
        loss_scale_type = "dynamic" if amp_level != "O0" and amp_dtype == ms.float16 else "none"
    runtime = Runtime(device, rank, world_size, amp_level, amp_dtype, loss_scale_type, jit_level_for(device),
                      device_automatic=choice.automatic)
    _logger.info("device %s, rank %d of %d, amp %s%s, loss scale %s, jit_level %s", device, rank, world_size,
                 amp_level, "" if amp_level == "O0" else f" ({amp_dtype})", loss_scale_type, runtime.jit_level)
    return runtime


class _Collective(nn.Cell):
    def __init__(self, op):
        super().__init__()
        self.op = op

    def construct(self, x):
        return self.op(x)


_collectives = {}


def _collective(name, make_op):
    """One cell per collective, so its graph compiles once per input shape (they are called at every
    log line under data parallel)."""
    if name not in _collectives:
        _collectives[name] = _Collective(make_op())
    return _collectives[name]


def sum_over_ranks(array):
    """Element-wise sum of a float32 host array over all ranks (every rank must call it)."""
    return _collective("sum", ops.AllReduce)(ms.Tensor(np.asarray(array, np.float32))).asnumpy()


def gather_from_ranks(array):
    """``(world_size, *shape)``: every rank's float32 ``array``, in rank order (every rank must call it)."""
    array = np.asarray(array, np.float32)
    gathered = _collective("gather", ops.AllGather)(ms.Tensor(array[None])).asnumpy()
    return gathered.reshape((-1,) + array.shape)
