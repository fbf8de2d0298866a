"""Per-device settings without a device: float32 means float32 (HF32 on Ascend and TF32 on GPU
are asked off unless ``fast_float32`` allows them; the calls MindSpore receives are recorded), and
the train step's jit_level."""
import mindspore as ms
import pytest
from mindspore.device_context.ascend import op_precision as ascend_precision
from mindspore.device_context.gpu import op_precision as gpu_precision

from dvt_ms.config import load_config
from dvt_ms.device import set_float32_precision
from dvt_ms.train import runtime

SWITCHES = {"Ascend": (ascend_precision, ("matmul_allow_hf32", "conv_allow_hf32")),
            "GPU": (gpu_precision, ("matmul_allow_tf32", "conv_allow_tf32"))}


@pytest.fixture
def recorded(monkeypatch):
    calls = []
    for module, names in SWITCHES.values():
        for name in names:
            monkeypatch.setattr(module, name, lambda value, name=name: calls.append((name, value)))
    return calls


@pytest.mark.parametrize("device", ["Ascend", "GPU"])
@pytest.mark.parametrize("fast", [False, True])
def test_device_float32_matmuls_and_convolutions_follow_fast_float32(recorded, device, fast):
    set_float32_precision(device, fast)
    assert sorted(recorded) == sorted((name, fast) for name in SWITCHES[device][1])


def test_cpu_has_nothing_to_switch(recorded):
    set_float32_precision("CPU", False)
    assert recorded == []


def test_runs_ask_for_true_float32_unless_the_config_allows_fast(monkeypatch, tmp_path):
    seen = []
    monkeypatch.setattr(runtime, "set_float32_precision", lambda device, fast: seen.append((device, fast)))
    runtime.setup_runtime(load_config(overrides={"data_dir": str(tmp_path), "device_target": "CPU"}))
    runtime.setup_runtime(load_config(overrides={"data_dir": str(tmp_path), "device_target": "CPU",
                                                 "fast_float32": True}))
    assert seen == [("CPU", False), ("CPU", True)]
    assert ms.get_context("device_target") == "CPU"


def test_train_step_fuses_operators_on_ascend_only():
    assert runtime.jit_level_for("Ascend") == "O1"
    assert runtime.jit_level_for("CPU") == runtime.jit_level_for("GPU") == "O0"
