"""Which device MindSpore runs on: the config's ``auto`` resolved, graph mode set."""
import mindspore as ms

from .errors import ConfigError

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
    """Run in GRAPH_MODE on ``device_target`` (``auto`` resolved); returns the device's name. A device
    MindSpore cannot use here is a ``ConfigError`` (MindSpore's own is a multi-line RuntimeError)."""
    device = resolve_device(device_target)
    if device != "CPU" and not ms.hal.is_available(device):
        raise ConfigError(f"device_target {device}: MindSpore cannot use a {device} on this machine (its {device} "
                          "plugin did not load: no device, or its driver and toolkit are missing); use "
                          "device_target CPU, or auto to pick what is there")
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device(device)
    return device
