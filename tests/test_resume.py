"""Resuming continues the run as recorded: its config, its readable checkpoints, its sample order;
what changed is refused or recorded, and every refusal names its cause. (Exact continuation of the
weights: tests/test_training.py.)"""
import json
import logging
import shutil

import pytest
import yaml

from dvt_ms.config import load_config
from dvt_ms.errors import CheckpointError, ConfigError, DataError
from dvt_ms.train.checkpoints import TrainingState
from dvt_ms.train.progress import Progress
from dvt_ms.train.run_folder import start_config
from dvt_ms.train.trainer import Trainer
from helpers import REPO, read_log
from test_run_folder import damage
from test_training import NUM_CLASSES, tiny_config


@pytest.fixture()
def image_folder(tmp_path, make_class_folders):
    """A training split of its own (4 classes x 8 images: 4 steps of 8 per epoch) that a test may change."""
    make_class_folders(tmp_path / "data" / "train", NUM_CLASSES, per_class=8)
    return tmp_path / "data"


def started_run(image_folder, folder, steps=(2, 3), **settings):
    """A run started in ``folder`` (run.json, config.yaml) with training checkpoints at ``steps``."""
    trainer = Trainer(tiny_config(image_folder, folder, epochs=2, **settings))
    trainer._claim_run_folder()
    for step in steps:
        trainer.checkpoints.save(trainer.train_step, TrainingState(epoch=step // 4, step_in_epoch=step % 4,
                                                                   global_step=step, steps_per_epoch=4))
    trainer.run_folder.release()
    return trainer


@pytest.mark.parametrize("how", ["truncated", "bit-flipped"])
def test_resume_auto_passes_over_a_damaged_newest_checkpoint_naming_it(image_folder, tmp_path, how, caplog):
    folder = tmp_path / "run"
    started_run(image_folder, folder)
    damage(folder / "step_00000003.ckpt", how)
    with caplog.at_level(logging.WARNING):
        resumed = Trainer(tiny_config(image_folder, folder, epochs=2, resume="auto"))
    assert resumed.state.global_step == 2 and resumed.resumed_from == str(folder / "step_00000002.ckpt")
    assert f"passing over {folder / 'step_00000003.ckpt'}: cannot read checkpoint" in caplog.text
    assert "damaged" in caplog.text and "permission" not in caplog.text
    resumed._claim_run_folder()
    resumed.run_folder.release()
    assert (folder / "step_00000003.ckpt.unreadable").is_file() and not (folder / "step_00000003.ckpt").exists()
    start = json.loads((folder / "run.json").read_text())["starts"][-1]
    assert start["passed_over"] == ["step_00000003.ckpt"] and start["global_step"] == 2

    damage(folder / "step_00000002.ckpt", how)
    with pytest.raises(CheckpointError, match="no checkpoint in .* can be read"):
        Trainer(tiny_config(image_folder, folder, epochs=2, resume="auto"))


def test_resume_after_images_were_added_names_the_changed_training_split(image_folder, tmp_path, make_class_folders):
    folder = tmp_path / "run"
    started_run(image_folder, folder)
    make_class_folders(image_folder / "train", NUM_CLASSES, per_class=10, seed=3)   # 2 more images per class
    with pytest.raises(CheckpointError) as raised:
        Trainer(tiny_config(image_folder, folder, epochs=2, resume="auto"))
    message = str(raised.value)
    assert "written with 4 steps per epoch, this run has 5" in message
    assert "now has 40 images, 32 when the run was last started" in message
    assert "keep batch_size" not in message


def test_a_resume_refuses_a_new_seed_and_records_a_new_learning_rate(image_folder, tmp_path, caplog):
    folder = tmp_path / "run"
    started_run(image_folder, folder)
    with pytest.raises(ConfigError) as raised:
        Trainer(tiny_config(image_folder, folder, epochs=2, resume="auto", seed=1, lr=1e-3))
    assert "seed 0 -> 1" in str(raised.value) and "lr" not in str(raised.value).split("would change")[0]
    with caplog.at_level(logging.WARNING):
        resumed = Trainer(tiny_config(image_folder, folder, epochs=2, resume="auto", lr=1e-3, label_smoothing=0.1))
    changes = {"lr": [2e-3, 1e-3], "label_smoothing": [0.0, 0.1]}
    assert resumed.config_changes == changes
    assert "lr changes from 0.002 to 0.001 at global step 3" in caplog.text
    resumed._claim_run_folder()
    resumed.run_folder.release()
    starts = json.loads((folder / "run.json").read_text())["starts"]
    assert "changed" not in starts[0] and starts[-1]["changed"] == changes    # what the earlier steps used
    assert yaml.safe_load((folder / "config.yaml").read_text())["lr"] == 1e-3


def test_resume_auto_on_the_command_line_continues_the_recorded_run(image_folder, tmp_path):
    """The README's ``run_train.sh configs/tiny_cpu.yaml resume=auto``: the run's recorded config, with
    only the command line's values changed (not the config file's)."""
    folder = tmp_path / "run"
    recorded = started_run(image_folder, folder).config.as_dict()
    per_start = ("resume", "overwrite", "max_steps", "output_dir")
    resumed = start_config("configs/tiny_cpu.yaml", {"resume": "auto", "output_dir": str(folder)}).as_dict()
    assert {key: value for key, value in resumed.items() if key not in per_start} == \
        {key: value for key, value in recorded.items() if key not in per_start}
    assert resumed["resume"] == "auto" and resumed["output_dir"] == str(folder)
    changed = start_config(None, {"resume": "auto", "output_dir": str(folder), "log_every_steps": 7}).as_dict()
    assert changed == {**resumed, "log_every_steps": 7}
    fresh = {"data_dir": str(image_folder), "output_dir": str(tmp_path / "new")}
    assert start_config("configs/tiny_cpu.yaml", fresh) == load_config(REPO / "configs" / "tiny_cpu.yaml", fresh)


def test_a_run_that_never_trained_a_step_leaves_its_folder_free(image_folder, tmp_path, monkeypatch):
    folder = tmp_path / "run"

    def failing_first_epoch(self):
        raise RuntimeError("the data pipeline failed before the first step")

    monkeypatch.setattr(Trainer, "_train_epoch", failing_first_epoch)
    with pytest.raises(RuntimeError, match="before the first step"):
        Trainer(tiny_config(image_folder, folder, epochs=2, holdout_per_class=1)).fit()
    assert not {"run.json", "config.yaml", "log.jsonl", "holdout.json"} & {p.name for p in folder.iterdir()}
    Trainer(tiny_config(image_folder, folder, epochs=2, holdout_per_class=2))   # the retry is not refused


def test_the_eta_after_a_start_leaves_the_compiling_first_step_out(tmp_path, monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr("dvt_ms.train.progress.time.perf_counter", lambda: clock[0])
    progress = Progress(str(tmp_path), total_steps=104, images_per_step=8, log_every_steps=4, bar="never")
    state = TrainingState(epoch=0, step_in_epoch=0, global_step=100, steps_per_epoch=200)   # a resume at 100
    progress.start_epoch(0, 1, 100, 200)
    lines = []
    monkeypatch.setattr("dvt_ms.train.progress._logger.info", lambda fmt, *args: lines.append(fmt % args))
    for seconds in (60.0, 2.0):   # compiling, then a step
        clock[0] += seconds
        progress.step()
        state.global_step += 1
    progress.log(state, 1, [1.0], 1e-3, 0, 2)
    progress.close()
    assert lines[-1].endswith("ETA 0m04s"), lines    # 2 steps left at 2 s each, not at 31 s


def test_device_target_without_that_device_is_a_one_line_error(image_folder, tmp_path, capsys):
    from dvt_ms.train.__main__ import main as train_main
    code = train_main(["configs/tiny_cpu.yaml", "device_target=GPU", f"data_dir={image_folder}",
                       f"output_dir={tmp_path / 'run'}"])
    error = capsys.readouterr().err
    assert code == 2 and error.count("\n") == 1 and error.startswith("error: device_target GPU"), error
    assert "device_target CPU" in error and not (tmp_path / "run").exists()


@pytest.mark.slow
def test_a_data_folder_that_vanishes_mid_run_is_one_error_with_a_resume_hint(image_folder, tmp_path, monkeypatch,
                                                                            caplog):
    folder = tmp_path / "run"
    real_end_epoch = Progress.end_epoch

    def end_epoch_then_unmount(self):
        real_end_epoch(self)
        shutil.rmtree(image_folder, ignore_errors=True)

    monkeypatch.setattr(Progress, "end_epoch", end_epoch_then_unmount)
    trainer = Trainer(tiny_config(image_folder, folder, epochs=3, verify_images=False))
    with caplog.at_level(logging.WARNING), pytest.raises(DataError) as raised:
        trainer.fit()
    message = str(raised.value)
    assert f"the data folder {image_folder / 'train'} is gone" in message
    assert f"saved {folder / 'step_00000004.ckpt'}" in message and "resume=auto" in message
    assert sum("could not be read" in record.message for record in caplog.records) == 0
    assert [record["global_step"] for record in read_log(folder, "train")] == [1, 2, 3, 4]
