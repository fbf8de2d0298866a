"""Optional compiled CPU kernels for exact GELU and LayerNorm (forward and backward).

MindSpore 2.10's CPU kernels for exact (erf) GELU and LayerNorm are 20-60x slower than one fused
pass over the data (docs/performance.md). ``kernels.cc`` holds such passes; they are compiled with
the system C++ compiler on first use into a per-user cache keyed by the source's hash and called
through ``ops.Custom(func_type="aot")``.

Nothing happens by itself: importing this module or building a layer compiles, reads and writes
nothing. The runtime set-up of a command that runs on the CPU (training, calibration, benchmarks)
calls ``enable()`` (through ``dvt_ms.models.layers.use_cpu_kernels``), which builds the library
then and there; only layers built after that use the kernels. They are used only where all of
these hold, and the native op is used otherwise:
  * ``enable()`` was called and the environment does not switch them off (``DVT_CPU_KERNELS=0``);
  * the library builds and loads (no compiler, a failed build, an AOT white list that excludes the
    cache: one warning, then the native ops, never an exception);
  * the tensor is float32 (float16/bfloat16 under mixed precision take the native op);
  * the model is not being exported (``use_native_ops``: a MindIR must run where this library is not).

Environment: ``DVT_CPU_KERNELS`` (0/false/off disables), ``CXX`` (compiler, default g++),
``DVT_CPU_KERNELS_CACHE`` (build directory, default ``$XDG_CACHE_HOME/dvt_ms/cpu_kernels``).
"""
import hashlib
import logging
import os
import platform
import subprocess

import mindspore as ms
from mindspore import ops

from ...errors import DiskFullError
from ...fileio import atomic_write

__all__ = ["enable", "enabled", "library_path", "gelu_op", "layer_norm_op", "use_native_ops"]

LOGGER = logging.getLogger(__name__)
SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "kernels.cc")
# -fopenmp-simd: the `omp simd` loop hints without the OpenMP runtime (its spinning workers fight
# MindSpore's own thread pool); threads are plain std::threads inside the kernels.
CXXFLAGS = ["-std=c++17", "-O3", "-march=native", "-fopenmp-simd", "-fPIC", "-shared", "-pthread"]
_DISABLED_VALUES = ("0", "false", "off", "no")

# (compiler, cache dir) -> path of the built library, or None when it could not be built. Keyed by
# the settings so that changing them (tests, a user's retry) tries again; warned about once each.
_BUILDS = {}
# The library that layers built from now on call, or None (native ops): set by ``enable`` only.
_ENABLED = {"path": None}


def enable(on=True):
    """Layers built after this call use the kernels (``on``) or MindSpore's native ops. Switching
    on builds the library now (or finds it in the cache); returns whether the kernels are on:
    False when ``DVT_CPU_KERNELS`` switches them off or the build failed (warned once)."""
    wanted = on and os.environ.get("DVT_CPU_KERNELS", "1").strip().lower() not in _DISABLED_VALUES
    _ENABLED["path"] = library_path() if wanted else None
    return _ENABLED["path"] is not None


def enabled():
    return _ENABLED["path"] is not None


def _cache_dir():
    configured = os.environ.get("DVT_CPU_KERNELS_CACHE")
    if configured:
        return configured
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "dvt_ms", "cpu_kernels")


def _processor_identity():
    """What ``-march=native`` compiles for: the machine and, on Linux, the CPU's model and flags (a
    cache in a shared home directory must not hand one CPU's build to another)."""
    identity = [platform.machine()]
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            identity += sorted({line.strip() for line in handle if line.startswith(("model name", "flags"))})
    except OSError:
        identity.append(platform.processor())
    return "\n".join(identity)


def _build(compiler, cache_dir):
    """Compile ``kernels.cc`` into ``cache_dir`` unless a build of this exact source, flags and
    processor is there already. Built under a temporary name and renamed: concurrent builds (data-parallel
    ranks, test workers) never load a half-written library."""
    with open(SOURCE, "rb") as handle:
        source = handle.read()
    settings = " ".join([compiler] + CXXFLAGS) + "\n" + _processor_identity()
    digest = hashlib.sha256(source + settings.encode()).hexdigest()[:16]
    target = os.path.join(cache_dir, f"libdvt_cpu_kernels_{digest}.so")
    if os.path.exists(target):
        return target
    atomic_write(target, lambda staging: subprocess.run([compiler, *CXXFLAGS, "-o", staging, SOURCE], check=True,
                                                        capture_output=True, text=True))
    return target


def library_path():
    """Path of the built kernel library, or None (with one warning per setting) if it cannot be built."""
    compiler, cache_dir = os.environ.get("CXX", "g++"), _cache_dir()
    key = (compiler, cache_dir)
    if key not in _BUILDS:
        try:
            _BUILDS[key] = _build(compiler, cache_dir)
        except (OSError, subprocess.CalledProcessError, DiskFullError) as error:
            detail = getattr(error, "stderr", None) or str(error)
            LOGGER.warning("CPU kernels for GELU/LayerNorm not built (%s: %s); using MindSpore's native ops",
                           compiler, detail.strip().splitlines()[-1] if detail.strip() else type(error).__name__)
            _BUILDS[key] = None
    return _BUILDS[key]


def _custom(name, out_shape, out_dtype, bprop=None):
    """ops.Custom for kernel ``name`` of the enabled library, or None (warned) if MindSpore refuses it."""
    path = _ENABLED["path"]
    try:
        return ops.Custom(f"{path}:{name}", out_shape=out_shape, out_dtype=out_dtype, func_type="aot", bprop=bprop)
    except (TypeError, ValueError, RuntimeError) as error:   # e.g. MS_CUSTOM_AOT_WHITE_LIST excludes the cache
        if ("custom", path) not in _BUILDS:
            LOGGER.warning("CPU kernels not usable (%s); using MindSpore's native ops", error)
            _BUILDS[("custom", path)] = None
        return None


def gelu_op():
    """Exact GELU x·Φ(x) on float32 as a fused kernel with its fused gradient, or None (not enabled)."""
    if not enabled():
        return None
    gradient = _custom("GeluErfGrad", lambda x, dy: x, lambda x, dy: x)
    if gradient is None:
        return None

    def bprop(x, out, dout):
        return (gradient(x, dout),)

    return _custom("GeluErf", lambda x: x, lambda x: x, bprop)


def layer_norm_op():
    """LayerNorm over the last axis, ``op(x, gamma, beta, eps) -> (y, mean, rstd)`` on float32
    (``eps`` a (1,) tensor), with its fused gradient; or None (not enabled)."""
    if not enabled():
        return None
    float32 = ms.float32
    gradient = _custom("LayerNormBwd", lambda x, gamma, mean, rstd, dy: (x, gamma, gamma),
                       lambda *dtypes: (float32, float32, float32))
    if gradient is None:
        return None

    def bprop(x, gamma, beta, eps, out, dout):
        dx, dgamma, dbeta = gradient(x, gamma, out[1], out[2], dout[0])
        return dx, dgamma, dbeta, ops.zeros_like(eps)

    return _custom("LayerNormFwd", lambda x, gamma, beta, eps: (x, x[:-1], x[:-1]),
                   lambda *dtypes: (float32, float32, float32), bprop)


def use_native_ops(network):
    """Switch every layer of ``network`` built with these kernels (or the fused GELU) to
    MindSpore's default ops, in place.

    Export calls this: a MindIR file must hold only MindSpore's own operators, runnable on any
    backend."""
    for _, cell in network.cells_and_names():
        if hasattr(cell, "use_cpu_kernel"):
            cell.use_cpu_kernel = False
        if hasattr(cell, "use_fused"):
            cell.use_fused = False
    return network
