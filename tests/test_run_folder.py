"""A run folder belongs to one run: a new run never deletes, overwrites or mixes with another."""
import json
import os
import socket
import subprocess

import mindspore as ms
import numpy as np
import pytest
from mindspore import nn

from dvt_ms.errors import OutputPathError
from dvt_ms.train.checkpoints import CheckpointManager, TrainingState
from dvt_ms.train.run_folder import inspect_run_folder
from dvt_ms.train.trainer import Trainer
from helpers import read_log
from test_training import NUM_CLASSES, tiny_config


def used_folder(path, steps=(31, 62, 93), best=True):
    """A folder another run left: its checkpoints (readable, each holding its step), best.ckpt, config
    and log (contents made up)."""
    path.mkdir(parents=True, exist_ok=True)
    for step in steps:
        ms.save_checkpoint([{"name": "step", "data": ms.Tensor(np.array([step], np.float32))}],
                           str(path / f"step_{step:08d}.ckpt"), crc_check=True)
    if best:
        (path / "best.ckpt").write_bytes(b"old run, 49.3%")
    (path / "config.yaml").write_text("lr: 0.001\n")
    (path / "log.jsonl").write_text('{"event": "start"}\n')
    return path


def snapshot(path):
    """Every file of the run with its bytes and modification time (our lock file and the image-check
    cache aside: the cache describes the dataset, not the run, and any run may refresh it)."""
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(path.iterdir())
            if not p.name.startswith(".dvt-") and p.name != "image_check"}


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory, make_class_folders):
    root = tmp_path_factory.mktemp("images")
    make_class_folders(root / "train", NUM_CLASSES, per_class=8)
    return root


def test_a_fresh_run_into_a_used_folder_refuses_before_any_work_and_changes_nothing(tmp_path):
    folder = used_folder(tmp_path / "run")
    before = snapshot(folder)
    # No data folder: the refusal must come before the data is read.
    with pytest.raises(OutputPathError) as raised:
        Trainer(tiny_config(tmp_path / "no-data", folder))
    message = str(raised.value)
    assert str(folder) in message and "step_00000093.ckpt" in message and "best.ckpt" in message
    assert "resume=auto" in message and "overwrite=true" in message and "another output_dir" in message
    assert snapshot(folder) == before


def test_resume_choices_that_would_overwrite_a_run_refuse(tmp_path):
    folder = used_folder(tmp_path / "run")
    with pytest.raises(OutputPathError, match="later checkpoints \\(step_00000093.ckpt\\)"):
        inspect_run_folder(folder, str(folder / "step_00000062.ckpt"), overwrite=False)
    assert inspect_run_folder(folder, str(folder / "step_00000093.ckpt"), False).resume_path == \
        str(folder / "step_00000093.ckpt")
    assert inspect_run_folder(folder, "auto", False).resume_path == str(folder / "step_00000093.ckpt")
    elsewhere = used_folder(tmp_path / "other", steps=(5,), best=False)
    with pytest.raises(OutputPathError, match="holds another run"):   # continuing another run into this one
        inspect_run_folder(folder, str(elsewhere / "step_00000005.ckpt"), False)
    fresh = inspect_run_folder(tmp_path / "new", str(elsewhere / "step_00000005.ckpt"), False)
    assert (fresh.resume_path, fresh.move_aside) == (str(elsewhere / "step_00000005.ckpt"), False)

    only_best = used_folder(tmp_path / "best-only", steps=(), best=True)
    with pytest.raises(OutputPathError, match="has best.ckpt but no step_\\*.ckpt"):
        inspect_run_folder(only_best, "auto", False)
    assert inspect_run_folder(only_best, "auto", True).move_aside
    never_saved = used_folder(tmp_path / "never-saved", steps=(), best=False)   # stopped before a checkpoint
    again = inspect_run_folder(never_saved, "auto", False)
    assert (again.resume_path, again.move_aside) == (None, False)


def damage(path, how):
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[:len(data) // 2])
    else:   # one flipped bit: the CRC check fails
        path.write_bytes(data[:len(data) // 2] + bytes([data[len(data) // 2] ^ 0x10]) + data[len(data) // 2 + 1:])


@pytest.mark.parametrize("how", ["truncated", "bit-flipped"])
def test_resume_from_an_intact_checkpoint_passes_over_later_damaged_ones_naming_them(tmp_path, how, caplog):
    folder = used_folder(tmp_path / "run")
    damage(folder / "step_00000093.ckpt", how)
    decision = inspect_run_folder(folder, str(folder / "step_00000062.ckpt"), False)
    assert decision.resume_path == str(folder / "step_00000062.ckpt")
    assert decision.unreadable == (str(folder / "step_00000093.ckpt"),)
    assert "step_00000093.ckpt: cannot read checkpoint" in caplog.text and "damaged" in caplog.text
    assert "permission" not in caplog.text
    decision.claim({"lr": 0.1}, {"global_step": 62})
    decision.release()
    assert (folder / "step_00000093.ckpt.unreadable").is_file()        # kept, out of the way
    assert CheckpointManager(str(folder), 1).latest() == str(folder / "step_00000062.ckpt")
    with pytest.raises(OutputPathError, match="later checkpoints \\(step_00000062.ckpt\\)"):
        inspect_run_folder(folder, str(folder / "step_00000031.ckpt"), False)   # an intact later one still counts


def test_checkpoint_rotation_never_removes_a_later_checkpoint(tmp_path):
    (tmp_path / "step_00000093.ckpt").write_bytes(b"a later checkpoint")
    manager = CheckpointManager(str(tmp_path), keep=2)
    for step in (10, 20, 31):
        manager.save(nn.Dense(2, 2), TrainingState(global_step=step, steps_per_epoch=4))
    assert sorted(p.name for p in tmp_path.iterdir()) == \
        ["step_00000020.ckpt", "step_00000031.ckpt", "step_00000093.ckpt"]


def _dead_pid():
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_a_started_run_holds_its_folder_and_cleans_what_killed_writers_left(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    leftover = folder / f".dvt-tmp-{_dead_pid()}@{socket.gethostname()}-abcd1234.ckpt"
    leftover.write_bytes(b"half a checkpoint")
    first = inspect_run_folder(folder, None, False)
    run_id = first.claim({"lr": 0.1}, {"global_step": 0})
    assert not leftover.exists()
    assert json.loads((folder / "run.json").read_text())["run_id"] == run_id
    try:
        second = inspect_run_folder(folder, "auto", False)   # the same run, continued by a second process
        with pytest.raises(OutputPathError, match=f"in use by another training run \\(pid {os.getpid()} on"):
            second.claim({"lr": 0.1}, {"global_step": 0})
    finally:
        first.release()
    second.claim({"lr": 0.1}, {"global_step": 0})
    second.release()
    record = json.loads((folder / "run.json").read_text())
    assert record["run_id"] == run_id and len(record["starts"]) == 2


@pytest.mark.slow
def test_overwrite_moves_the_old_run_aside_untouched(image_folder, tmp_path):
    folder = tmp_path / "run"
    Trainer(tiny_config(image_folder, folder, max_steps=2, epochs=1)).fit()
    old = snapshot(folder)
    old_id = json.loads((folder / "run.json").read_text())["run_id"]
    Trainer(tiny_config(image_folder, folder, max_steps=1, epochs=1, overwrite=True)).fit()
    aside, = tmp_path.glob("run.old-*")
    assert {name: content for name, (content, _) in snapshot(aside).items()} == \
        {name: content for name, (content, _) in old.items()}
    assert sorted(p.name for p in folder.glob("step_*.ckpt")) == ["step_00000001.ckpt"]
    assert [record["run_id"] for record in read_log(folder, "start")] != [old_id]
    assert len(read_log(folder, "start")) == 1
