"""``device_target: auto`` chooses loudly and safely: the plugin states are faked on this CPU host
(what MindSpore records at import: which plugins loaded, and its load-error text)."""
import glob
import logging

import mindspore as ms
import pytest

from dvt_ms import device
from dvt_ms.config import load_config, model_overrides
from dvt_ms.errors import ConfigError
from dvt_ms.models import build_config
from dvt_ms.train.memory import DEVICE_SIZED_BYTES, check_training_memory, estimate_training_memory
from dvt_ms.train.runtime import Runtime, setup_runtime
from helpers import REPO

# What MindSpore 2.10 records on a host without CANN's libraries on the library path.
ASCEND_LOAD_ERROR = ("Load dynamic library: libmindspore_ascend.so.2 failed. libge_runner.so: cannot open shared "
                     "object file: No such file or directory\n")


@pytest.fixture
def plugins(monkeypatch):
    """Set which plugins 'loaded' and MindSpore's load error; every plugin file is present."""
    state = {"loaded": set(), "error": ""}
    monkeypatch.setattr(device, "_plugin_loaded", lambda name: name in state["loaded"])
    monkeypatch.setattr(device, "_plugin_load_error", lambda: state["error"])
    monkeypatch.setattr(device, "_plugin_files", lambda name: [f"/fake/plugin/{name}.so"])
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.setenv("PATH", "/nonexistent")   # no nvcc
    return state


def test_auto_prefers_ascend_then_gpu_and_says_so(plugins, caplog):
    plugins["loaded"] = {"Ascend", "GPU"}
    assert device.choose_device("auto").device == "Ascend"
    plugins["loaded"] = {"GPU"}
    plugins["error"] = ASCEND_LOAD_ERROR
    choice = device.choose_device("auto")
    assert choice.device == "GPU" and choice.automatic
    assert "libge_runner.so" in choice.passed_over["Ascend"] and "set_env.sh" in choice.passed_over["Ascend"]


def test_auto_falling_back_to_cpu_warns_with_mindsporess_load_error(plugins, caplog, monkeypatch):
    monkeypatch.setattr(ms, "set_device", lambda name: None)   # this host stays on its CPU whatever we say
    plugins["error"] = ASCEND_LOAD_ERROR
    with caplog.at_level(logging.INFO, logger="dvt_ms.device"):
        choice = device.use_device("auto")
    assert choice.device == "CPU"
    [record] = [r for r in caplog.records if r.name == "dvt_ms.device"]
    assert record.levelno == logging.WARNING
    message = record.getMessage()
    assert "running on CPU" in message
    assert "libmindspore_ascend.so.2 failed. libge_runner.so: cannot open shared object file" in message
    # No GPU error recorded: the message says what MindSpore looked for instead.
    assert "CUDA_HOME unset" in message and "libcudart.so.11.0" in message


def test_a_package_without_the_plugin_is_named_as_such(plugins, monkeypatch):
    monkeypatch.setattr(device, "_plugin_files", lambda name: [])
    assert "has no plugin" in device.choose_device("auto").passed_over["GPU"]


def test_an_explicit_device_is_taken_as_written_without_probing(plugins, monkeypatch):
    monkeypatch.setattr(device, "_plugin_loaded", lambda name: pytest.fail("probed plugins for an explicit device"))
    choice = device.choose_device("CPU")
    assert choice == device.DeviceChoice("CPU", automatic=False, passed_over={})


def test_the_load_error_names_real_plugin_libraries_of_the_installed_mindspore():
    """The library names the error lines are matched by are the ones this MindSpore ships."""
    for name in device.ACCELERATORS:
        assert device._plugin_files(name), name


def test_auto_on_cpu_refuses_a_data_parallel_run(plugins, monkeypatch):
    monkeypatch.setenv("MS_WORKER_NUM", "8")
    plugins["error"] = ASCEND_LOAD_ERROR
    config = load_config(overrides={"device_target": "auto", "data_dir": "unused"})
    with pytest.raises(ConfigError) as error:
        setup_runtime(config)
    message = str(error.value)
    assert "data-parallel run of 8 workers" in message and "device_target=CPU" in message
    assert "libge_runner.so" in message and "\n" not in message


def _step_of(config_file):
    config = load_config(str(REPO / "configs" / config_file))
    return build_config(config.model, **model_overrides(config)), config.batch_size


def test_the_device_configs_are_device_sized_and_the_cpu_configs_are_not():
    for path in glob.glob(str(REPO / "configs" / "*.yaml")):
        name = path.rsplit("/", 1)[1]
        model_config, batch_size = _step_of(name)
        total = estimate_training_memory(model_config, batch_size, "O0").total
        written = load_config(path).device_target
        assert (total > DEVICE_SIZED_BYTES) == (written == "auto"), (name, total, written)


@pytest.mark.parametrize("automatic", [True, False])
def test_auto_on_cpu_refuses_an_imagenet_step_unless_cpu_is_written(plugins, automatic):
    model_config, batch_size = _step_of("dvt_t2t_vit_12_imagenet.yaml")
    runtime = Runtime("CPU", 0, 1, "O0", ms.float16, "none", device_automatic=automatic)
    plenty = 10 * estimate_training_memory(model_config, batch_size, "O0").total
    if automatic:
        with pytest.raises(ConfigError, match="sized for a device.*device_target=CPU"):
            check_training_memory(model_config, batch_size, runtime, available=plenty)
    else:
        check_training_memory(model_config, batch_size, runtime, available=plenty)


def test_an_explicit_device_whose_plugin_did_not_load_is_a_one_line_error(plugins):
    plugins["error"] = ASCEND_LOAD_ERROR
    with pytest.raises(ConfigError) as error:
        device.use_device("Ascend")
    message = str(error.value)
    assert message.startswith("device_target Ascend:") and "libge_runner.so" in message and "\n" not in message
