"""The most expensive kernels of a ``mindspore.profiler`` run, read from what it wrote.

MindSpore 2.10 writes ``<dir>/<host>_<pid>_<time>_ascend_ms/ASCEND_PROFILER_OUTPUT/``: on Ascend
``kernel_details.csv`` (one row per kernel launch, with its ``Accelerator Core``: AI_CORE,
AI_CPU, ...), and on every device ``trace_view.json`` (Chrome trace events; CPU kernels carry
``args.type`` HostCpuOps). Kernels are summed by type (``MatMul``, ``Im2Col``, ...).
AICPU kernels (Ascend's host-side AI CPU) and host kernels are flagged: on a device they mean a
round trip off the accelerator.
"""
import collections
import csv
import glob
import json
import os
import re

__all__ = ["top_kernels"]

_OP_SUFFIX = re.compile(r"-op\d+$")


def _kernel_type(name):
    """``Default/network/1-GELU/GeLU-op0`` -> ``GeLU``."""
    return _OP_SUFFIX.sub("", name.rsplit("/", 1)[-1])


def _flag(core, on_host):
    upper = core.upper().replace("_", "")
    if "AICPU" in upper:
        return "AICPU"
    if not on_host and ("HOST" in upper or upper == "CPU"):
        return "host"
    return ""


def _from_kernel_details(path):
    totals = collections.defaultdict(lambda: [0, 0.0])
    with open(path, newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            kernel = (row.get("Type") or _kernel_type(row.get("Name", "?")), row.get("Accelerator Core", "?"))
            totals[kernel][0] += 1
            totals[kernel][1] += float(row.get("Duration(us)") or 0.0)
    return totals


def _from_trace(path):
    with open(path, encoding="utf-8") as handle:
        events = json.load(handle)
    if isinstance(events, dict):
        events = events.get("traceEvents", [])
    spans = [event for event in events if event.get("ph") == "X" and "dur" in event]
    # Kernels are named <scope>/<Type>-op<N>; the other spans are the scopes around them.
    kernels = [event for event in spans if _OP_SUFFIX.search(event.get("name", ""))]
    totals = collections.defaultdict(lambda: [0, 0.0])
    for event in kernels or spans:
        core = (event.get("args") or {}).get("type") or event.get("cat") or "?"
        kernel = (_kernel_type(event.get("name", "?")), "host" if core == "HostCpuOps" else core)
        totals[kernel][0] += 1
        totals[kernel][1] += float(event["dur"])
    return totals


def top_kernels(profile_dir, count=10, on_host=False):
    """``count`` dicts {type, core, calls, total_ms, share, flag}, most time first ([] if none).
    ``on_host``: the run was on the CPU, where host kernels are the norm (not flagged)."""
    for name, read in (("kernel_details.csv", _from_kernel_details), ("trace_view.json", _from_trace)):
        paths = sorted(glob.glob(os.path.join(profile_dir, "**", name), recursive=True))
        if paths:
            totals = collections.defaultdict(lambda: [0, 0.0])
            for path in paths:
                for kernel, (calls, micros) in read(path).items():
                    totals[kernel][0] += calls
                    totals[kernel][1] += micros
            everything = sum(micros for _, micros in totals.values()) or 1.0
            ranked = sorted(totals.items(), key=lambda item: -item[1][1])[:count]
            return [{"type": kernel, "core": core, "calls": calls, "total_ms": micros / 1000,
                     "share": micros / everything, "flag": _flag(core, on_host)}
                    for (kernel, core), (calls, micros) in ranked]
    return []
