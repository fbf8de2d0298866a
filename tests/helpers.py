"""Shared test helpers: golden configs and converted golden checkpoints; training runs as a user
starts them and their logs."""
import json
import os
import pathlib
import socket
import subprocess

import mindspore as ms

import dvt_ms
from dvt_ms.convert import convert_checkpoint

REPO = pathlib.Path(__file__).resolve().parents[1]
GOLDEN_MODELS = {"t2t": "dvt_t2t_vit_12", "deit": "dvt_deit_small"}


def golden_overrides(golden_dir, family):
    """The golden reduced config (``<family>.json``) as create_model overrides."""
    overrides = json.loads((golden_dir / f"{family}.json").read_text())
    assert overrides.pop("family") == family
    return overrides


def converted_golden_model(golden_dir, family, out_dir, **extra):
    """Convert ``<family>.pth.tar`` with our converter and load it into an eval-mode model."""
    overrides = golden_overrides(golden_dir, family)
    ckpt = out_dir / f"{family}.ckpt"
    if not ckpt.exists():
        convert_checkpoint(golden_dir / f"{family}.pth.tar", ckpt, GOLDEN_MODELS[family], overrides)
    overrides.update(extra)
    model = dvt_ms.create_model(GOLDEN_MODELS[family], **overrides)
    ms.load_param_into_net(model, ms.load_checkpoint(str(ckpt)), strict_load=True)
    model.set_train(False)
    return model, ckpt


def read_log(output_dir, event):
    lines = (pathlib.Path(output_dir) / "log.jsonl").read_text().splitlines()
    return [record for record in map(json.loads, lines) if record["event"] == event]


def losses_by_step(output_dir):
    return {record["global_step"]: record["exit_losses"] for record in read_log(output_dir, "train")}


def as_overrides(settings, **more):
    """key=value command-line overrides (YAML values)."""
    return [f"{key}={json.dumps(value)}" for key, value in {**settings, **more}.items()]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_script(*args, timeout):
    """scripts/run_train.sh as a user runs it; returns the completed process (output captured)."""
    env = {**os.environ, "GLOG_v": "3"}
    return subprocess.run(["bash", str(REPO / "scripts" / "run_train.sh"), *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)
