"""The self-check users run on their hardware (scripts/run_device_check.sh): its kernel table read
from what MindSpore's profiler writes, its report files, and a small run on this CPU."""
import json
import os
import subprocess

import pytest

from dvt_ms.devicecheck import repository_golden_dir, write_report
from dvt_ms.devicecheck.kernels import top_kernels
from helpers import REPO


def test_ascend_kernel_details_are_summed_by_type_and_aicpu_is_flagged(tmp_path):
    output = tmp_path / "host_1_2_ascend_ms" / "ASCEND_PROFILER_OUTPUT"
    output.mkdir(parents=True)
    (output / "kernel_details.csv").write_text(
        "Step Id,Name,Type,Accelerator Core,Start Time(us),Duration(us)\n"
        "1,Default/Im2Col-op1,Im2Col,AI_CPU,0,300\n"
        "1,Default/Im2Col-op2,Im2Col,AI_CPU,0,200\n"
        "1,Default/MatMul-op3,MatMul,AI_CORE,0,400\n"
        "1,Default/Add-op4,Add,AI_VECTOR_CORE,0,100\n")
    (output / "trace_view.json").write_text("[]")   # kernel_details.csv is preferred where it exists
    kernels = top_kernels(tmp_path, count=2)
    assert [(k["type"], k["core"], k["calls"], k["flag"]) for k in kernels] == [
        ("Im2Col", "AI_CPU", 2, "AICPU"), ("MatMul", "AI_CORE", 1, "")]
    assert kernels[0]["total_ms"] == pytest.approx(0.5) and kernels[0]["share"] == pytest.approx(0.5)


def test_trace_view_kernels_are_the_op_spans_not_their_scopes(tmp_path):
    output = tmp_path / "vm_1_2_ascend_ms" / "ASCEND_PROFILER_OUTPUT"
    output.mkdir(parents=True)
    events = [{"ph": "X", "name": "Default", "dur": "900", "args": {}},
              {"ph": "X", "name": "Default/0-Dense/MatMul-op0", "dur": "30.5", "args": {"type": "HostCpuOps"}},
              {"ph": "X", "name": "Default/2-Dense/MatMul-op1", "dur": "9.5", "args": {"type": "HostCpuOps"}},
              {"ph": "X", "name": "Default/1-GELU/GeLU-op0", "dur": "10", "args": {"type": "HostCpuOps"}},
              {"ph": "M", "name": "process_name", "args": {"name": "CPU OP"}}]
    (output / "trace_view.json").write_text(json.dumps(events))
    on_cpu = top_kernels(tmp_path, on_host=True)
    assert [(k["type"], k["calls"], k["flag"]) for k in on_cpu] == [("MatMul", 2, ""), ("GeLU", 1, "")]
    assert on_cpu[0]["share"] == pytest.approx(0.8)
    # Beside an accelerator, a kernel on the host is flagged.
    assert {k["flag"] for k in top_kernels(tmp_path, on_host=False)} == {"host"}


def test_the_report_lists_every_part_and_leaves_no_temporary(tmp_path):
    report = {"environment": {"device": "Ascend", "device_target": "auto", "device_reason": "its plugin loaded",
                              "mindspore": "2.10.0", "python": "3.11", "platform": "x", "quick": True,
                              "rank_agreement": "n/a"},
              "parts": [{"name": "parity t2t", "status": "passed", "seconds": 1.0, "detail": "a|b", "data": {}},
                        {"name": "kernels", "status": "passed", "seconds": 0.1, "detail": "top 1", "data": {
                            "kernels": [{"type": "Im2Col", "core": "AI_CPU", "calls": 9, "total_ms": 5.0,
                                         "share": 0.4, "flag": "AICPU"}]}}],
              "passed": True}
    md_path, json_path = write_report(report, tmp_path / "out")
    assert json.loads(open(json_path).read()) == report
    text = open(md_path).read()
    assert "| parity t2t | passed | 1.0 | a\\|b |" in text
    assert "| Im2Col | AI_CPU | 9 | 5.00 | 40.0% | AICPU |" in text
    assert sorted(os.listdir(tmp_path / "out")) == ["device_check.json", "device_check.md"]


def test_the_golden_files_are_found_in_this_checkout():
    assert repository_golden_dir() == REPO / "tests" / "golden"


@pytest.mark.slow
def test_the_device_check_passes_on_this_cpu_in_its_quick_mode(tmp_path):
    result = subprocess.run(["bash", str(REPO / "scripts" / "run_device_check.sh"), "--device_target", "CPU",
                             "--quick", "--presets", "dvt_deit_small", "--out", str(tmp_path)],
                            cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((tmp_path / "device_check.json").read_text())
    statuses = {part["name"]: part["status"] for part in report["parts"]}
    assert set(statuses.values()) == {"passed"}, statuses
    assert any(name.startswith("parity t2t") for name in statuses) and any(
        name.startswith("export + engine dvt_deit_small") for name in statuses)
    kernels = next(part for part in report["parts"] if part["name"] == "kernels")["data"]["kernels"]
    assert "MatMul" in {k["type"] for k in kernels}
    assert "| kernel | where | calls |" in (tmp_path / "device_check.md").read_text()
