"""scripts/run_train.sh cannot hang: failed workers end it in seconds with their first error in one
line, a multi-node command missing its rendezvous is refused, signals reach everything it started.

Most tests put a fake ``msrun`` on the launcher's PATH (a virtual environment of its own whose
requirements stamp is current): it writes the worker logs and the failure line MindSpore's msrun
logs, then waits the way msrun waits for its scheduler's cluster timeout."""
import hashlib
import os
import signal
import subprocess
import sys
import time

import pytest

from dvt_ms import device
from helpers import REPO

FAKE_MSRUN = r"""#!/usr/bin/env bash
for arg; do case "$arg" in --log_dir=*) log_dir="${arg#--log_dir=}" ;; esac; done
printf '%s\n' "$@" > "$FAKE_DIR/msrun_args"
mkdir -p "$log_dir"
if [ "$FAKE_MODE" = fail ]; then
  printf 'Traceback (most recent call last):\n  File "x", line 1\nRuntimeError: the cluster lost rank 1\n' > "$log_dir/worker_0.log"
  printf '[WARNING] ME(7) a warning\nerror: device_target Ascend: MindSpore cannot use it on this host\n' > "$log_dir/worker_1.log"
  echo "[ERROR] ME(99:1,MainProcess):2026 [_api.py:365] Worker process 123 exit with exception. Error code: 2."
fi
echo $$ > "$FAKE_DIR/msrun_pid"
exec sleep 300   # msrun waiting for its scheduler (which waits for the dead workers until its timeout)
"""


@pytest.fixture
def fake_venv(tmp_path):
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    os.symlink(sys.executable, venv / "bin" / "python")
    (venv / "bin" / "msrun").write_text(FAKE_MSRUN)
    (venv / "bin" / "msrun").chmod(0o755)
    stamp = hashlib.sha256((REPO / "requirements.txt").read_bytes()).hexdigest()
    (venv / ".requirements.sha256").write_text(stamp + "\n")
    return venv


def _launcher(venv, tmp_path, *args, mode="fail"):
    env = {**os.environ, "DVT_VENV": str(venv), "FAKE_DIR": str(tmp_path), "FAKE_MODE": mode}
    command = ["bash", str(REPO / "scripts" / "run_train.sh"), str(REPO / "configs" / "tiny_cpu.yaml"), *args]
    return subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:   # a zombie has ended
        return stat.read().split(") ")[1][0] != "Z"


def test_failed_workers_end_the_launcher_in_seconds_with_their_first_error_in_one_line(fake_venv, tmp_path):
    logs = tmp_path / "logs"
    started = time.monotonic()
    launcher = _launcher(fake_venv, tmp_path, "--num_devices", "2", "--log_dir", str(logs), "--bind_core")
    _, stderr = launcher.communicate(timeout=60)
    assert time.monotonic() - started < 20
    assert launcher.returncode == 1
    # Our own errors ("error: ...") come before Python's and MindSpore's, whatever the rank.
    assert stderr.splitlines()[-1] == (f"error: device_target Ascend: MindSpore cannot use it on this host "
                                       f"[worker_1.log] (all logs in {logs}/)")
    msrun_pid = int((tmp_path / "msrun_pid").read_text())
    assert not _alive(msrun_pid), "msrun (waiting for its scheduler) was left running"
    assert "--bind_core=True" in (tmp_path / "msrun_args").read_text().split()


def test_sigterm_while_no_worker_runs_ends_msrun_at_once(fake_venv, tmp_path):
    launcher = _launcher(fake_venv, tmp_path, "--num_devices", "2", "--log_dir", str(tmp_path / "logs"), mode="hang")
    deadline = time.monotonic() + 20
    while not (tmp_path / "msrun_pid").exists():
        assert time.monotonic() < deadline and launcher.poll() is None
        time.sleep(0.1)
    launcher.send_signal(signal.SIGTERM)
    _, stderr = launcher.communicate(timeout=10)
    assert launcher.returncode == 143
    assert not _alive(int((tmp_path / "msrun_pid").read_text()))
    assert "aborting" in stderr


@pytest.mark.parametrize("rendezvous", [[], ["--master_addr", "10.0.0.1"], ["--node_rank", "1"]])
def test_several_nodes_without_master_addr_and_node_rank_are_refused_in_one_line(fake_venv, tmp_path, rendezvous):
    launcher = _launcher(fake_venv, tmp_path, "--num_nodes", "2", "--num_devices", "8", *rendezvous)
    _, stderr = launcher.communicate(timeout=30)
    assert launcher.returncode == 2
    assert stderr.strip() == ("run_train.sh: 16 workers on 2 nodes need --master_addr (the first node's address) "
                              "and --node_rank (0..1, this node's)")
    assert not (tmp_path / "msrun_args").exists()


def test_a_node_rank_outside_the_nodes_is_refused(fake_venv, tmp_path):
    launcher = _launcher(fake_venv, tmp_path, "--num_nodes", "2", "--master_addr", "10.0.0.1", "--node_rank", "2")
    _, stderr = launcher.communicate(timeout=30)
    assert launcher.returncode == 2 and "--node_rank must be 0..1 for 2 nodes, got 2" in stderr


@pytest.mark.skipif(device._plugin_loaded("Ascend"), reason="this host has Ascend")
def test_a_single_worker_on_a_device_that_is_not_there_gives_one_line(tmp_path):
    result = subprocess.run(["bash", str(REPO / "scripts" / "run_train.sh"), str(REPO / "configs" / "tiny_cpu.yaml"),
                             "device_target=Ascend", f"output_dir={tmp_path / 'out'}"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: device_target Ascend: MindSpore cannot use it on this host: its plugin did not load")


@pytest.mark.slow
@pytest.mark.skipif(device._plugin_loaded("Ascend"), reason="this host has Ascend")
def test_real_msrun_workers_failing_after_init_end_the_launcher_long_before_the_cluster_timeout(tmp_path):
    """MindSpore's scheduler would wait its cluster timeout (600 s) for the dead workers."""
    from helpers import free_port
    logs = tmp_path / "logs"
    started = time.monotonic()
    result = subprocess.run(["bash", str(REPO / "scripts" / "run_train.sh"), str(REPO / "configs" / "tiny_cpu.yaml"),
                             "--num_devices", "2", "--master_port", str(free_port()), "--log_dir", str(logs),
                             f"data_dir={tmp_path / 'missing'}", f"output_dir={tmp_path / 'out'}"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert time.monotonic() - started < 120
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: dataset folder {tmp_path / 'missing'}/train does not exist [worker_")
