"""Which device MindSpore runs on: the config's ``auto`` resolved, graph mode set."""
import mindspore as ms

__all__ = ["resolve_device", "use_device", "set_float32_precision"]


def resolve_device(device_target):
    """``auto`` picks Ascend, then GPU, then CPU; any other value is returned as it is."""
    if device_target != "auto":
        return device_target
    for candidate in ("Ascend", "GPU"):
        if ms.hal.is_available(candidate):
            return candidate
    return "CPU"


def use_device(device_target):
    """Run in GRAPH_MODE on ``device_target`` (``auto`` resolved); returns the device's name."""
    device = resolve_device(device_target)
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device(device)
    return device


def set_float32_precision(device, fast_float32):
    """Whether float32 matmuls and convolutions may run in a shorter format on ``device``.

    CANN computes float32 convolutions in HF32 by default (Ascend) and cuDNN allows TF32 (GPU):
    faster, but float32 results then differ in the 4th digit and parity with the published models
    (1e-4) does not hold. ``fast_float32`` False (the ``fast_float32`` config key's default) asks for
    true float32 in both matmuls and convolutions; True allows HF32/TF32 for speed. Nothing to do
    on CPU. Call once per process, before anything compiles (MindSpore refuses a second, different
    setting)."""
    if device == "Ascend":
        from mindspore.device_context.ascend import op_precision
        op_precision.matmul_allow_hf32(fast_float32)
        op_precision.conv_allow_hf32(fast_float32)
    elif device == "GPU":
        from mindspore.device_context.gpu import op_precision
        op_precision.matmul_allow_tf32(fast_float32)
        op_precision.conv_allow_tf32(fast_float32)
