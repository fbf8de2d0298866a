"""How much memory one training step needs, estimated before anything is built.

A cascade's memory grows with the square of its token counts: every block of exit k keeps its
attention logits and softmax (B, H, 1+n, 1+n) for the backward pass, the stage hands on all of
them (B, H·L, 1+n, 1+n), and the next exit's relation reuse widens the previous relations
threefold before resampling them. A grid of 64x64 tokens (4097 per image) needs tens of GB per
image where 14x14 needs a few MB, so an unlucky ``patch_grids`` or ``batch_size`` would only
show as the process being killed minutes later. ``check_training_memory`` refuses such a run
up front (exit 2) with the estimate and what to change, and warns when it is merely close.

The estimate counts the activations the backward pass keeps (attention maps, token tensors, the
reuse paths and tokenizers), times factors for the backward pass's own temporaries fitted to the
measured peak memory of four configurations on CPU in graph mode (within about 10 %:
``python benchmarks/train_step.py --memory``), plus weights, gradients, optimizer state and the
graph compiler's share. It is checked against the host's available memory on CPU; on Ascend/GPU
it is only logged (device memory is not known before MindSpore allocates it). A step estimated
above ``DEVICE_SIZED_BYTES`` is one the configs size for an accelerator (the ImageNet and 224 px
CIFAR configs: 23-73 GB); ``device_target: auto`` falling back to the CPU for it is refused.
"""
import dataclasses
import logging
import os

from ..device import auto_cpu_refusal
from ..errors import ConfigError
from ..fileio import format_bytes
from ..models.presets import FEATURE_REUSE_DIM, FEATURE_REUSE_HIDDEN

__all__ = ["DEVICE_SIZED_BYTES", "MemoryEstimate", "estimate_training_memory", "available_memory", "check_training_memory"]

_logger = logging.getLogger(__name__)

# Peak memory of a step per element counted below, fitted on CPU in graph mode
# (benchmarks/train_step.py --memory): attention maps, and token tensors (more temporaries each).
_MAPS_FACTOR = 1.8
_TOKENS_FACTOR = 3.4
_COMPILER_BYTES = 0.5 * 2 ** 30   # what compiling the step graph takes, measured on a tiny config
# Weights, gradients, two optimizer moments and an EMA copy, float32.
_BYTES_PER_PARAMETER = 20
_REFUSE_ABOVE = 1.2   # of the available memory: clearly does not fit
_WARN_ABOVE = 0.7
# A step this large is meant for an accelerator: the demo and tiny CPU configs need under 1 GB, the
# device configs 23 GB and more (a CPU would take weeks per epoch even where it fits).
DEVICE_SIZED_BYTES = 8 * 2 ** 30


@dataclasses.dataclass(frozen=True)
class MemoryEstimate:
    total: float                 # bytes of one training step
    per_image: float             # activation bytes per image (the part batch_size scales)
    fixed: float                 # parameters, gradients, optimizer state
    largest_exit: int            # 1-based exit whose activations dominate
    largest_exit_share: float


def _exit_activations(config, geometry):
    """(attention-map elements, other elements) one image keeps in exit ``geometry`` for backward."""
    tokens = geometry.num_tokens
    dim, heads, depth = config.embed_dim, config.num_heads, config.depth
    hidden = int(dim * config.mlp_ratio)
    maps = 3 * heads * tokens ** 2 * depth          # logits (+ reused relations), softmax, per block
    maps += heads * depth * tokens ** 2             # the stage's relations, concatenated
    reuse = FEATURE_REUSE_DIM if geometry.feature_reuse else 0
    other = depth * tokens * (14 * dim + 2 * hidden + 2 * reuse)
    if geometry.feature_reuse:
        prev_tokens = geometry.prev_num_tokens
        other += depth * prev_tokens * (dim + 2 * FEATURE_REUSE_HIDDEN + FEATURE_REUSE_DIM)
    if geometry.relation_reuse:
        prev_tokens = geometry.prev_num_tokens
        # expand x3, GELU, reduce, then resampled keys and queries
        maps += heads * depth * (7 * prev_tokens ** 2 + prev_tokens * tokens + 2 * tokens ** 2)
    if config.family == "t2t":
        channels = 3
        for index, (kernel, _, _) in enumerate(geometry.splits):
            positions = geometry.split_grids[index] ** 2
            width = channels * kernel * kernel
            other += positions * (2 * width + (20 * config.token_dim if index < 2 else dim))
            channels = config.token_dim
    else:
        other += 3 * config.img_size ** 2 + tokens * dim
    return maps, other


def _approximate_parameters(config):
    """Parameters of the cascade, to a few per cent (blocks, reuse paths, tokenizers, heads)."""
    dim, hidden = config.embed_dim, int(config.embed_dim * config.mlp_ratio)
    total = 0
    for geometry in config.exits:
        block = 4 * dim * dim + 2 * dim * hidden
        if geometry.feature_reuse:
            block += (dim + FEATURE_REUSE_HIDDEN) * FEATURE_REUSE_HIDDEN + FEATURE_REUSE_DIM * hidden
        total += config.depth * block + dim * config.num_classes + geometry.num_tokens * dim
        if geometry.relation_reuse:
            total += 6 * (config.num_heads * config.depth) ** 2
        if config.family == "t2t":
            first, later = geometry.splits[0][0], geometry.splits[1][0]
            token = config.token_dim
            total += (3 * first ** 2 + 9 * token) * 3 * token + 2 * later ** 2 * token * (token + dim)
        else:
            kernel = geometry.splits[0][0]
            total += 3 * kernel * kernel * dim
    return total


def estimate_training_memory(config, batch_size, amp_level):
    """``MemoryEstimate`` of one training step of a ``DVTConfig`` cascade."""
    num_parameters = _approximate_parameters(config)
    half = amp_level != "O0"
    per_exit = []
    for geometry in config.exits:
        maps, other = _exit_activations(config, geometry)
        # Under mixed precision the attention stays float32; the token tensors are half precision.
        per_exit.append(_MAPS_FACTOR * 4 * maps + _TOKENS_FACTOR * (2 if half else 4) * other)
    per_image = sum(per_exit)
    fixed = _BYTES_PER_PARAMETER * num_parameters + _COMPILER_BYTES
    largest = max(range(len(per_exit)), key=per_exit.__getitem__)
    return MemoryEstimate(total=fixed + batch_size * per_image, per_image=per_image, fixed=fixed,
                          largest_exit=largest + 1, largest_exit_share=per_exit[largest] / sum(per_exit))


def available_memory():
    """Bytes of host memory available to a new allocation (MemAvailable), or None if unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return None


def check_training_memory(config, batch_size, runtime, available=None):
    """Refuse (``ConfigError``) a CPU run whose step clearly does not fit in memory, or a device-sized
    step that ``device_target: auto`` put on the CPU; warn when close.

    ``available`` defaults to the host's available memory shared by the ranks of this run."""
    estimate = estimate_training_memory(config, batch_size, runtime.amp_level)
    if runtime.device_target == "CPU" and runtime.device_automatic and estimate.total > DEVICE_SIZED_BYTES:
        raise ConfigError(auto_cpu_refusal(
            f"a training step sized for a device (about {format_bytes(estimate.total)}, batch_size {batch_size}, "
            f"token grids {list(config.grids)})"))
    if runtime.device_target != "CPU":
        _logger.info("estimated memory of a training step: %s per device", format_bytes(estimate.total))
        return estimate
    if available is None:
        available = available_memory()
        if available is None:
            return estimate
        available /= runtime.world_size
    share = estimate.total / available
    what = (f"a training step needs about {format_bytes(estimate.total)} of memory (batch_size {batch_size}, "
            f"token grids {list(config.grids)}; exit {estimate.largest_exit}'s activations take "
            f"{100 * estimate.largest_exit_share:.0f}% of it) and {format_bytes(available)} is available")
    fitting_batch = int((_WARN_ABOVE * available - estimate.fixed) // estimate.per_image)
    if share > _REFUSE_ABOVE:
        advice = (f"lower batch_size to {fitting_batch} or less" if fitting_batch >= 1
                  else "even one image does not fit: use smaller token grids (patch_grids / img_size) or a "
                       "smaller model")
        raise ConfigError(f"{what}: {advice}, or use smaller token grids")
    if share > _WARN_ABOVE:
        _logger.warning("%s: the run may run out of memory; lower batch_size (e.g. %d) if it does", what,
                        max(fitting_batch, 1))
    return estimate
