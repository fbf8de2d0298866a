"""Which device MindSpore runs on: the config's ``auto`` resolved loudly, graph mode set.

MindSpore loads its device plugins (``mindspore/lib/plugin``) when it is imported and remembers
only whether each one loaded; ``ms.hal.is_available`` answers that and nothing more. A wheel that
carries the Ascend and GPU plugins on a host where CANN's ``set_env.sh`` was not sourced, or
whose CUDA is not the 11.x the GPU plugins were built for, silently has CPU only. So ``auto``
logs the device it chose and, for every device it passed over, why: MindSpore's own load error
for that plugin (``MSContext.load_plugin_error``, what ``hal.is_available`` logs as a warning).
Callers that must not run on the host CPU by accident (data-parallel or device-sized training)
ask ``auto_cpu_refusal`` for the one-line error (docs/devices.md).
"""
import dataclasses
import glob
import logging
import os
import shutil

import mindspore as ms

from .errors import ConfigError

__all__ = ["DeviceChoice", "choose_device", "use_device", "auto_cpu_refusal", "set_float32_precision",
           "ACCELERATORS"]

_logger = logging.getLogger(__name__)

ACCELERATORS = ("Ascend", "GPU")   # the order ``auto`` tries them in
# The plugin libraries of each accelerator, as MindSpore names them in its load errors.
_PLUGIN_NAMES = {"Ascend": ("libmindspore_ascend", "libmindspore_ops_ascend"), "GPU": ("libmindspore_gpu",)}
_HINTS = {
    "Ascend": "source CANN's set_env.sh (e.g. /usr/local/Ascend/ascend-toolkit/set_env.sh) with the CANN "
              "version MindSpore 2.10 needs",
    "GPU": "MindSpore 2.10's GPU plugins need CUDA 11.1 or 11.6 (libcudart.so.11.0, libcudnn.so.8) found through "
           "CUDA_HOME or nvcc",
}
_MAX_ERROR_CHARS = 300


@dataclasses.dataclass(frozen=True)
class DeviceChoice:
    device: str            # Ascend, GPU or CPU
    automatic: bool        # chosen by ``auto`` rather than written in the config
    passed_over: dict      # accelerator -> why ``auto`` could not use it (only for ``auto``)

    def reason(self):
        """Why this device, in a few words for a log line."""
        if not self.automatic:
            return "device_target set explicitly"
        if not self.passed_over:
            return "its plugin loaded"
        return "; ".join(f"no {name}: {why}" for name, why in self.passed_over.items())


def _plugin_loaded(device):
    """True if MindSpore loaded ``device``'s plugin when it was imported (what ``hal.is_available`` reads)."""
    from mindspore._c_expression import MSContext
    return MSContext.get_instance().is_pkg_support_device(device)


def _plugin_load_error():
    """MindSpore's record of the plugin libraries that failed to load at import (one line each)."""
    from mindspore._c_expression import MSContext
    return MSContext.get_instance().load_plugin_error()


def _plugin_files(device):
    """The plugin libraries for ``device`` this MindSpore package ships."""
    plugin_dir = os.path.join(os.path.dirname(ms.__file__), "lib", "plugin")
    return [path for name in _PLUGIN_NAMES[device] for path in glob.glob(os.path.join(plugin_dir, name + ".so*"))]


def _why_unavailable(device):
    """Why MindSpore cannot run on ``device`` here: its load error, or what it looked for."""
    if not _plugin_files(device):
        return "this MindSpore package has no plugin for it (install the wheel built for it)"
    lines = [line.strip() for line in _plugin_load_error().splitlines()
             if any(name in line for name in _PLUGIN_NAMES[device])]
    if lines:
        error = " / ".join(lines)
        if len(error) > _MAX_ERROR_CHARS:
            error = error[:_MAX_ERROR_CHARS] + "..."
        return f"its plugin did not load ({error}); {_HINTS[device]}"
    if device == "GPU" and not os.environ.get("CUDA_HOME") and shutil.which("nvcc") is None:
        return f"MindSpore found no CUDA to choose its GPU plugin for (CUDA_HOME unset, no nvcc on PATH); {_HINTS['GPU']}"
    return f"its plugin did not load (MindSpore recorded no error; raise its log level with GLOG_v=1); {_HINTS[device]}"


def choose_device(device_target):
    """``DeviceChoice`` for the config's ``device_target``: ``auto`` takes Ascend, then GPU, then CPU."""
    if device_target != "auto":
        return DeviceChoice(device_target, automatic=False, passed_over={})
    passed_over = {}
    for candidate in ACCELERATORS:
        if _plugin_loaded(candidate):
            return DeviceChoice(candidate, automatic=True, passed_over=passed_over)
        passed_over[candidate] = _why_unavailable(candidate)
    return DeviceChoice("CPU", automatic=True, passed_over=passed_over)


def auto_cpu_refusal(what):
    """The one-line error for ``device_target: auto`` falling back to the CPU for ``what``
    (e.g. "a data-parallel run of 8 workers"), saying why and what to fix."""
    choice = choose_device("auto")
    return (f"device_target is auto and found no Ascend or GPU ({choice.reason()}), so {what} would run on "
            f"the host CPU: fix the device setup (docs/devices.md), or set device_target=CPU to run on the "
            f"CPU on purpose")


def use_device(device_target):
    """Run in GRAPH_MODE on ``device_target`` (``auto`` resolved and logged); returns the ``DeviceChoice``.

    An accelerator written explicitly whose plugin did not load is a one-line ``ConfigError`` with
    MindSpore's load error (MindSpore itself raises a RuntimeError with a C++ call stack)."""
    choice = choose_device(device_target)
    if choice.device in ACCELERATORS and not choice.automatic and not _plugin_loaded(choice.device):
        raise ConfigError(f"device_target {choice.device}: MindSpore cannot use it on this host: "
                          f"{_why_unavailable(choice.device)}")
    if choice.automatic:
        log = _logger.warning if choice.device == "CPU" and any(
            "did not load" in why for why in choice.passed_over.values()) else _logger.info
        log("device_target auto: running on %s (%s)", choice.device, choice.reason())
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device(choice.device)
    return choice


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
