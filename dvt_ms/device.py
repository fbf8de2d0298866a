"""Which device MindSpore runs on: the config's ``auto`` resolved, graph mode set."""
import mindspore as ms

__all__ = ["resolve_device", "use_device"]


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
