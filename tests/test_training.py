"""Training on CPU in GRAPH_MODE with a very small cascade: the loss falls, a resumed run continues
exactly, msrun data parallel keeps the ranks identical, and nothing a run made is lost. (Data
problems: tests/test_data.py.)"""
import errno
import logging
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys

import mindspore as ms
import numpy as np

import dvt_ms
import pytest
from mindspore import nn

from dvt_ms.checkpoint import load_pretrained, store
from dvt_ms.train.checkpoints import CheckpointManager, TrainingState, load_training_checkpoint
from dvt_ms.config import load_config, model_overrides
from dvt_ms.data import epoch_indices, make_loader, open_dataset
from dvt_ms.errors import CheckpointError, ConfigError, DataError, DiskFullError
from dvt_ms.train.memory import check_training_memory, estimate_training_memory
from dvt_ms.train.runtime import Runtime
from dvt_ms.train.trainer import NonFiniteLossError, Trainer
from helpers import REPO, as_overrides, free_port, losses_by_step, read_log, run_script

NUM_CLASSES = 4

# A 3-exit deit cascade of ~30k parameters on 32 px images, with a deterministic input pipeline
# (full-image crop, no flip, no augmentation or mixing), so two runs see identical batches.
TINY = dict(
    model="dvt_deit_small", embed_dim=32, depth=1, num_heads=2, mlp_ratio=2.0, img_size=32,
    patch_grids=[2, 4, 8], num_classes=NUM_CLASSES, drop_path_rate=0.0,
    batch_size=8, num_workers=1, scale=[1.0, 1.0], ratio=[1.0, 1.0], hflip=0.0, auto_augment=None,
    re_prob=0.0, mixup=0.0, cutmix=0.0, label_smoothing=0.0,
    lr=2e-3, warmup_epochs=0, cooldown_epochs=0, min_lr=1e-5, device_target="CPU",
    progress_bar="never", log_every_steps=1, val_every_epochs=0, save_every_epochs=0,
)

# The same cascade as a T2T model: on 64 px images its exits have 2x2, 3x3 and 4x4 tokens.
TINY_FAMILY = {"deit": {}, "t2t": dict(model="dvt_t2t_vit_12", patch_grids=None, img_size=64, token_dim=16)}


def tiny_config(data_dir, output_dir, **overrides):
    return load_config(overrides={**TINY, "data_dir": str(data_dir), "output_dir": str(output_dir), **overrides})


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory, make_class_folders):
    root = tmp_path_factory.mktemp("images")
    make_class_folders(root / "train", NUM_CLASSES, per_class=8)
    make_class_folders(root / "val", NUM_CLASSES, per_class=2, seed=1)
    return root


@pytest.mark.slow
def test_tiny_config_loss_falls(image_folder, tmp_path):
    """configs/tiny_cpu.yaml through scripts/run_train.sh, shrunk to test size."""
    result = run_script("configs/tiny_cpu.yaml", *as_overrides(TINY, epochs=6, val_every_epochs=6),
                        f"data_dir={image_folder}", f"output_dir={tmp_path}", timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    losses = [sum(exit_losses) for _, exit_losses in sorted(losses_by_step(tmp_path).items())]
    assert len(losses) == 6 * 4
    assert np.mean(losses[-4:]) < 0.6 * np.mean(losses[:4]), losses
    validation = read_log(tmp_path, "val")[-1]
    assert len(validation["top1"]) == len(validation["top5"]) == 3
    assert validation["top1"][-1] > 50.0
    assert (tmp_path / "best.ckpt").is_file() and (tmp_path / "step_00000024.ckpt").is_file()
    resolved = load_config(tmp_path / "config.yaml")  # the resolved config is a valid config
    assert resolved.epochs == 6 and resolved.class_names == ("c0", "c1", "c2", "c3")  # labels recorded by name
    assert "lr" in result.stdout and "img/s" in result.stdout and "ETA" in result.stdout


@pytest.mark.slow
def test_resumed_run_continues_exactly(image_folder, tmp_path):
    """Interrupted after the step-3 checkpoint (mid-epoch 1) and resumed: the same next losses, across
    the epoch boundary, and the same final weights, optimizer state and EMA as the uninterrupted run."""
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    settings = dict(epochs=2, save_every_steps=3, ema=True, ema_decay=0.9, keep_checkpoints=5)
    summary = Trainer(tiny_config(image_folder, whole, **settings)).fit()
    assert summary["global_step"] == 8  # 32 images / batch 8 = 4 steps per epoch

    trainer = Trainer(tiny_config(image_folder, resumed, resume=str(whole / "step_00000003.ckpt"), **settings))
    assert (trainer.state.epoch, trainer.state.step_in_epoch, trainer.state.global_step) == (0, 3, 3)
    trainer.fit()

    expected, actual = losses_by_step(whole), losses_by_step(resumed)
    assert sorted(actual) == [4, 5, 6, 7, 8]
    for step in actual:
        np.testing.assert_allclose(actual[step], expected[step], rtol=1e-6, err_msg=f"step {step}")
    final_whole = ms.load_checkpoint(str(whole / "step_00000008.ckpt"))
    final_resumed = ms.load_checkpoint(str(resumed / "step_00000008.ckpt"))
    assert set(final_whole) == set(final_resumed)
    assert any(name.startswith("ema.") for name in final_whole)
    assert any(name.startswith("adam_m.") for name in final_whole)
    for name, value in final_whole.items():
        np.testing.assert_allclose(final_resumed[name].asnumpy(), value.asnumpy(), rtol=1e-6, err_msg=name)


@pytest.mark.slow
def test_resume_auto_after_an_epochs_last_step(image_folder, tmp_path):
    """resume: auto picks the newest checkpoint; one written at an epoch's last step resumes at the
    next epoch, and the log continues without repeating a step."""
    Trainer(tiny_config(image_folder, tmp_path, epochs=2, max_steps=4, save_every_steps=4)).fit()
    trainer = Trainer(tiny_config(image_folder, tmp_path, epochs=2, resume="auto"))
    assert (trainer.state.epoch, trainer.state.step_in_epoch, trainer.state.global_step) == (0, 4, 4)
    trainer.fit()
    assert [record["global_step"] for record in read_log(tmp_path, "train")] == list(range(1, 9))
    run = json.loads((tmp_path / "run.json").read_text())   # one run, started twice
    assert [start["global_step"] for start in run["starts"]] == [0, 4]
    assert [record["run_id"] for record in read_log(tmp_path, "start")] == [run["run_id"]] * 2


def test_mixed_precision_with_dynamic_loss_scale(image_folder, tmp_path):
    """The Ascend/GPU path (float16 O2, dynamic loss scaling, EMA, clipping) also compiles and trains on
    CPU. (The t2t family's: test_precision.py, the reported T2T command at 224 px.)"""
    config = tiny_config(image_folder, tmp_path, amp_level="O2", loss_scale_type="dynamic", loss_scale=1024.0,
                         ema=True, clip_grad_norm=1.0, max_steps=3, epochs=1, val_every_epochs=1)
    trainer = Trainer(config)
    assert (trainer.runtime.amp_level, trainer.runtime.loss_scale_type) == ("O2", "dynamic")
    trainer.fit()
    losses = losses_by_step(tmp_path)
    assert sorted(losses) == [1, 2, 3] and np.isfinite(list(losses.values())).all()
    saved = ms.load_checkpoint(str(tmp_path / "step_00000003.ckpt"))
    assert saved["loss_scale"].asnumpy() == 1024.0  # no overflow in 3 steps, 2000 clean steps to grow
    assert saved["stages.0.head.weight"].dtype == ms.float32  # weights stay float32 under O2


@pytest.mark.slow
@pytest.mark.parametrize("family", ["t2t"])
def test_msrun_two_workers_keep_identical_weights(image_folder, tmp_path, family):
    """Every parameter, trained or fixed (the T2T Performers' random features), agrees across ranks.
    One family: data parallelism is the same for both; T2T adds the fixed random features."""
    logs = tmp_path / "msrun_logs"
    settings = {**TINY, **TINY_FAMILY[family], "batch_size": 4, "epochs": 1}
    result = run_script("configs/tiny_cpu.yaml", "--num_devices", 2, "--master_port", free_port(),
                        "--log_dir", logs, *as_overrides(settings),
                        f"data_dir={image_folder}", f"output_dir={tmp_path / 'out'}", timeout=400)
    worker_logs = {path.name: path.read_text() for path in logs.glob("worker_*.log")}
    assert result.returncode == 0, result.stderr[-3000:] + "".join(text[-2000:] for text in worker_logs.values())
    assert set(worker_logs) == {"worker_0.log", "worker_1.log"}
    start = read_log(tmp_path / "out", "start")[0]
    assert start["world_size"] == 2 and start["steps_per_epoch"] == 4  # 32 images / 2 ranks / batch 4
    agreement = read_log(tmp_path / "out", "rank_agreement")[-1]
    fingerprints = np.array(agreement["fingerprints"])
    config = tiny_config(image_folder, tmp_path, **settings)
    num_parameters = len(list(dvt_ms.create_model(config.model, **model_overrides(config)).get_parameters()))
    assert fingerprints.shape == (2, num_parameters, 2)
    np.testing.assert_array_equal(fingerprints[0], fingerprints[1])
    assert agreement["max_difference"] == 0.0
    assert (tmp_path / "out" / "step_00000004.ckpt").is_file()


def write_cifar_binaries(root, name):
    """Full-size CIFAR binary batches (MindSpore's reader expects 10000 records per file) in which
    record i has label i % classes and every pixel equal to i % 251."""
    label_bytes, classes, files = {"cifar10": (1, 10, [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]),
                                   "cifar100": (2, 100, ["train.bin", "test.bin"])}[name]
    root.mkdir(parents=True)
    for file in files:
        count = 50000 if file == "train.bin" else 10000
        records = np.zeros((count, label_bytes + 3072), np.uint8)
        records[:, label_bytes - 1] = np.arange(count) % classes
        records[:, label_bytes:] = (np.arange(count) % 251)[:, None]
        (root / file).write_bytes(records.tobytes())


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_binaries_through_mindcv(tmp_path, name):
    root = tmp_path / name
    try:
        write_cifar_binaries(root, name)
        config = load_config(overrides={**TINY, "num_classes": None, "dataset": name, "data_dir": str(tmp_path),
                                        "val_split": "test", "auto_augment": "randaug-m9-mstd0.5-inc1",
                                        "mixup": 0.8, "cutmix": 1.0})
        train = open_dataset(config, "train")
        assert (train.num_samples, train.num_classes) == (50000, {"cifar10": 10, "cifar100": 100}[name])
        indices = epoch_indices(train.num_samples, epoch=0, seed=0, rank=0, world_size=1, shuffle=True)[:8]
        batches = list(make_loader(train, indices, config, 32, train.num_classes, True, 1).create_tuple_iterator())
        assert [tuple(images.shape) for images, _, _ in batches] == [(8, 3, 32, 32)]
        assert batches[0][2].asnumpy().tolist() == indices.tolist()  # the samples asked for, in that order
        assert batches[0][1].shape == (8, train.num_classes)  # mixup/cutmix: soft targets
        val = open_dataset(config, "test")
        (images, labels, _), = make_loader(val, np.array([3, 7, 12]), config, 32, val.num_classes, False, 1)\
            .create_tuple_iterator()
        assert labels.asnumpy().tolist() == [index % val.num_classes for index in (3, 7, 12)]
        # resize 37 + center crop 32 of a flat image, ImageNet-normalised: pixel value = index.
        red = images.asnumpy()[:, 0, 16, 16] * 0.229 * 255 + 0.485 * 255
        np.testing.assert_allclose(red, [3, 7, 12], atol=0.01)
    finally:
        shutil.rmtree(root, ignore_errors=True)  # 180-200 MB


def test_data_problems_are_clear_errors_before_training(tmp_path, make_class_folders):
    with pytest.raises(DataError, match="does not exist"):
        Trainer(tiny_config(tmp_path / "nowhere", tmp_path / "out"))
    root = tmp_path / "data"
    make_class_folders(root / "train", NUM_CLASSES, per_class=2)
    (root / "train" / "c9").mkdir()
    with pytest.raises(DataError, match=r"class folder .*c9 has no images"):
        Trainer(tiny_config(root, tmp_path / "out"))
    (root / "train" / "c9").rmdir()
    with pytest.raises(DataError, match="has 4 classes but the config says num_classes=10"):
        Trainer(tiny_config(root, tmp_path / "out", num_classes=10))
    assert not (tmp_path / "out").exists()  # nothing was checked or written: the errors came first
    with pytest.raises(DataError, match="fewer than one batch of 16"):
        Trainer(tiny_config(root, tmp_path / "out", batch_size=16))
    assert os.listdir(tmp_path / "out") == ["image_check"]  # only the image check (reused by the next start)


def test_checkpoints_keep_last_k_and_survive_a_crash_mid_save(tmp_path, monkeypatch):
    cell = nn.Dense(3, 2)
    manager = CheckpointManager(str(tmp_path), keep=2)
    for step in (10, 20, 30):
        manager.save(cell, TrainingState(global_step=step, steps_per_epoch=5))
    assert [os.path.basename(path) for path in manager.periodic_checkpoints()] == \
        ["step_00000020.ckpt", "step_00000030.ckpt"]
    good = (tmp_path / "step_00000030.ckpt").read_bytes()

    def crash_half_way(cell, path, **kwargs):
        pathlib.Path(path).write_bytes(good[: len(good) // 2])
        raise OSError("disk full")

    monkeypatch.setattr(store.ms, "save_checkpoint", crash_half_way)
    with pytest.raises(OSError, match="disk full"):
        manager.save(cell, TrainingState(global_step=30, steps_per_epoch=5))
    assert (tmp_path / "step_00000030.ckpt").read_bytes() == good
    assert sorted(path.name for path in tmp_path.iterdir()) == ["step_00000020.ckpt", "step_00000030.ckpt"]
    monkeypatch.undo()
    assert load_training_checkpoint(nn.Dense(3, 2), str(tmp_path / "step_00000030.ckpt")).global_step == 30


def test_pretrained_weights_with_fresh_heads_for_a_new_class_count(tmp_path):
    architecture = {key: TINY[key] for key in ("embed_dim", "depth", "num_heads", "mlp_ratio", "img_size")}
    architecture["patch_grids"] = tuple(TINY["patch_grids"])
    published = dvt_ms.create_model("dvt_deit_small", num_classes=1000, **architecture)
    ms.save_checkpoint(published, str(tmp_path / "converted.ckpt"))
    model = dvt_ms.create_model("dvt_deit_small", num_classes=NUM_CLASSES, **architecture)
    fresh_head = model.stages[0].head.weight.asnumpy().copy()
    load_pretrained(model, str(tmp_path / "converted.ckpt"))
    loaded = {param.name: param.asnumpy() for param in model.get_parameters()}
    for param in published.get_parameters():
        if ".head." not in param.name:
            np.testing.assert_array_equal(loaded[param.name], param.asnumpy(), err_msg=param.name)
    np.testing.assert_array_equal(loaded["stages.0.head.weight"], fresh_head)
    other = dvt_ms.create_model("dvt_deit_small", num_classes=NUM_CLASSES, **{**architecture, "embed_dim": 64})
    with pytest.raises(CheckpointError, match="has shape"):
        load_pretrained(other, str(tmp_path / "converted.ckpt"))


def test_fine_tuning_from_a_checkpoint_with_ema_starts_from_its_ema_weights(tmp_path):
    """One rule (docs/checkpoints.md): a checkpoint's EMA copies when it has them, for ``pretrained``
    as for evaluation and export."""
    architecture = {key: TINY[key] for key in ("embed_dim", "depth", "num_heads", "mlp_ratio", "img_size")}
    architecture["patch_grids"] = tuple(TINY["patch_grids"])
    source = dvt_ms.create_model("dvt_deit_small", num_classes=NUM_CLASSES, **architecture)
    params = [{"name": p.name, "data": p.data} for p in source.get_parameters()]
    params += [{"name": "ema." + p.name, "data": ms.Tensor(p.asnumpy() + 1.0)} for p in source.get_parameters()]
    ms.save_checkpoint(params, str(tmp_path / "trained.ckpt"))
    model = dvt_ms.create_model("dvt_deit_small", num_classes=NUM_CLASSES, **architecture)
    load_pretrained(model, str(tmp_path / "trained.ckpt"))
    for mine, theirs in zip(model.get_parameters(), source.get_parameters()):
        np.testing.assert_array_equal(mine.asnumpy(), theirs.asnumpy() + 1.0, err_msg=mine.name)


@pytest.mark.slow
def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(image_folder, tmp_path):
    config = tiny_config(image_folder, tmp_path, lr=1e38, min_lr=0.0, save_every_steps=1, epochs=2,
                         max_skipped_steps=1)
    trainer = Trainer(config)
    with pytest.raises(NonFiniteLossError) as raised:
        trainer.fit()
    message = str(raised.value)
    assert "non-finite loss" in message and "Last good checkpoint" in message
    checkpoints = sorted(tmp_path.glob("step_*.ckpt"))
    assert checkpoints and str(checkpoints[-1]) in message
    stopped_at = int(checkpoints[-1].stem.split("_")[1]) + 1
    assert f"global step {stopped_at}" in message
    fresh = Trainer(tiny_config(image_folder, tmp_path / "fresh", lr=1e38, min_lr=0.0, epochs=2))
    state = load_training_checkpoint(fresh.train_step, str(checkpoints[-1]))
    assert state.global_step == stopped_at - 1


@pytest.mark.slow
def test_losses_leave_the_device_only_at_the_log_cadence(image_folder, tmp_path, monkeypatch):
    """Every log line is the mean of the steps since the last one (the per-step losses of an
    otherwise identical run), and between log lines nothing is read back from the device (the
    input pipeline's own index column, a host tensor, is read by data.batches for every batch)."""
    per_step_dir, cadence_dir = tmp_path / "every-step", tmp_path / "every-4"
    Trainer(tiny_config(image_folder, per_step_dir, epochs=2, log_every_steps=1)).fit()
    trainer = Trainer(tiny_config(image_folder, cadence_dir, epochs=2, log_every_steps=4))
    read_at_steps = []
    real_asnumpy = ms.Tensor.asnumpy

    def recording_asnumpy(tensor):
        if sys._getframe(1).f_globals["__name__"] != "dvt_ms.data.batches":
            read_at_steps.append(trainer.state.global_step)
        return real_asnumpy(tensor)

    real_train_epoch = trainer._train_epoch

    def train_epoch_recording_reads():
        if trainer.state.epoch == 0:   # the first epoch compiles the step (compiling reads constants)
            return real_train_epoch()
        with monkeypatch.context() as patch:
            patch.setattr(ms.Tensor, "asnumpy", recording_asnumpy)
            real_train_epoch()

    trainer._train_epoch = train_epoch_recording_reads
    trainer.fit()
    assert set(read_at_steps) == {8}   # steps 5-8: the log line at step 8 only
    per_step, logged = losses_by_step(per_step_dir), losses_by_step(cadence_dir)
    assert sorted(logged) == [4, 8]
    for step in (4, 8):
        window = np.mean([per_step[s] for s in range(step - 3, step + 1)], axis=0)
        np.testing.assert_allclose(logged[step], window, rtol=1e-5, err_msg=f"step {step}")
    assert [record["mean_of_steps"] for record in read_log(cadence_dir, "train")] == [4, 4]


@pytest.mark.slow
def test_non_finite_loss_found_at_the_next_log_or_save_and_never_checkpointed(image_folder, tmp_path):
    """Losses read every 4 steps, checkpoints every 2: the run still names the first non-finite step
    (as a run reading every step does), stops by the next log line or save, and writes no
    checkpoint at or after it."""
    diverging = dict(lr=1e38, min_lr=0.0, epochs=3, max_skipped_steps=1)
    with pytest.raises(NonFiniteLossError) as every_step:
        Trainer(tiny_config(image_folder, tmp_path / "every-step", **diverging)).fit()
    trainer = Trainer(tiny_config(image_folder, tmp_path / "cadence", log_every_steps=4, save_every_steps=2,
                                  **diverging))
    with pytest.raises(NonFiniteLossError) as cadence:
        trainer.fit()
    first_bad = int(str(every_step.value).split("(global step ")[1].split(")")[0])
    assert f"(global step {first_bad})" in str(cadence.value)
    assert trainer.state.global_step <= first_bad + 1   # the next save (every 2) or log line (every 4)
    saved = sorted(int(path.stem.split("_")[1]) for path in (tmp_path / "cadence").glob("step_*.ckpt"))
    assert all(step < first_bad for step in saved)
    if saved:
        assert f"Last good checkpoint: {tmp_path / 'cadence' / f'step_{saved[-1]:08d}.ckpt'}" in str(cadence.value)
    assert all(np.isfinite(param.asnumpy()).all() for param in trainer.model.trainable_params())


@pytest.mark.slow
def test_a_non_finite_batch_is_skipped_and_counted_and_the_run_goes_on(image_folder, tmp_path, monkeypatch):
    """One NaN batch per epoch (its second): skipped and logged, never two in a row, so a run that
    tolerates two skips in a row trains to the end with finite weights."""
    import dvt_ms.train.trainer as trainer_module
    real_batches = trainer_module.checked_batches

    def second_batch_poisoned(loader, tracker, skip_batches=0):
        for index, (images, labels, fresh) in enumerate(real_batches(loader, tracker, skip_batches)):
            yield (images * float("nan") if index == 1 else images), labels, fresh

    monkeypatch.setattr(trainer_module, "checked_batches", second_batch_poisoned)
    trainer = Trainer(tiny_config(image_folder, tmp_path, epochs=2, max_skipped_steps=2))
    summary = trainer.fit()
    assert summary["global_step"] == 8
    assert [record["skipped_steps"] for record in read_log(tmp_path, "train")] == [0, 1, 0, 0] * 2
    assert all(np.isfinite(param.asnumpy()).all() for param in trainer.model.trainable_params())


def test_a_full_disk_stops_training_with_the_last_checkpoint_intact(image_folder, tmp_path, monkeypatch):
    real_save = store.ms.save_checkpoint
    calls = []

    def disk_full_on_second_save(cell, path, **kwargs):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(cell, path, **kwargs)

    monkeypatch.setattr(store.ms, "save_checkpoint", disk_full_on_second_save)
    trainer = Trainer(tiny_config(image_folder, tmp_path, epochs=1, save_every_steps=2))
    with pytest.raises(DiskFullError) as raised:
        trainer.fit()
    message = str(raised.value)
    assert str(tmp_path / "step_00000004.ckpt") in message and "free in" in message
    assert f"the last checkpoint is {tmp_path / 'step_00000002.ckpt'}" in message and "resume=auto" in message
    assert sorted(path.name for path in tmp_path.glob("*.ckpt")) == ["step_00000002.ckpt"]
    assert not list(tmp_path.glob(".dvt-tmp-*"))
    monkeypatch.undo()
    assert load_training_checkpoint(trainer.train_step, str(tmp_path / "step_00000002.ckpt")).global_step == 2


def test_a_step_that_cannot_fit_in_memory_is_refused_before_the_data_is_read(tmp_path):
    with pytest.raises(ConfigError) as raised:
        Trainer(tiny_config(tmp_path / "no-data", tmp_path / "out", batch_size=4096, patch_grids=[2, 4, 32]))
    message = str(raised.value)
    assert "batch_size 4096" in message and "token grids [2, 4, 32]" in message and "is available" in message
    assert "lower batch_size to" in message
    assert not (tmp_path / "out").exists()


def test_memory_estimate_refuses_warns_and_suggests_a_batch_that_fits(caplog):
    config = dvt_ms.build_config("dvt_deit_small", embed_dim=32, depth=1, num_heads=2, img_size=32,
                                 patch_grids=(2, 4, 32))
    runtime = Runtime("CPU", 0, 1, "O0", ms.float16, "none")
    estimate = estimate_training_memory(config, 64, "O0")
    assert estimate_training_memory(config, 128, "O0").total - estimate.total == pytest.approx(64 * estimate.per_image)
    assert estimate.largest_exit == 3
    with pytest.raises(ConfigError, match=r"lower batch_size to (\d+)") as raised:
        check_training_memory(config, 64, runtime, available=estimate.total / 1.5)
    suggested = int(re.search(r"lower batch_size to (\d+)", str(raised.value)).group(1))
    assert estimate_training_memory(config, suggested, "O0").total <= 0.7 * estimate.total / 1.5
    with caplog.at_level(logging.WARNING, logger="dvt_ms.train.memory"):
        check_training_memory(config, 64, runtime, available=estimate.total / 0.9)
    assert "may run out of memory" in caplog.text
    # Attention maps grow with the square of the token count: twice the grid side, about 16x the memory.
    wider = dvt_ms.build_config("dvt_deit_small", embed_dim=32, depth=1, num_heads=2, img_size=64,
                                patch_grids=(2, 4, 64))
    ratio = estimate_training_memory(wider, 1, "O0").per_image / estimate.per_image
    assert 12 < ratio < 17


def _train_command(image_folder, output_dir, **settings):
    return [sys.executable, "-m", "dvt_ms.train", *as_overrides(TINY, **settings), f"data_dir={image_folder}",
            f"output_dir={output_dir}"]


@pytest.mark.slow
@pytest.mark.parametrize("signals, exit_code", [((signal.SIGINT,), 130), ((signal.SIGTERM,), 143),
                                                ((signal.SIGINT, signal.SIGTERM), 143)],
                         ids=["ctrl-c", "sigterm", "second-signal-aborts"])
def test_a_stop_signal_saves_the_last_step_and_says_how_to_resume(image_folder, tmp_path, signals, exit_code):
    env = {**os.environ, "GLOG_v": "3", "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(_train_command(image_folder, tmp_path, epochs=1000), cwd=REPO, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in process.stdout:
            if " step " in line:   # the first log line: training runs
                break
        for signum in signals:
            process.send_signal(signum)
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == exit_code, stderr[-2000:]
    assert "Traceback" not in stderr
    if len(signals) > 1:
        assert "SIGTERM: aborting at once" in stderr
        return
    name = signal.Signals(signals[0]).name
    checkpoint, = tmp_path.glob("step_*.ckpt")
    assert f"stopped: {name}" in stderr and f"saved {checkpoint}" in stderr and "resume=auto" in stderr
    stopped_at = load_training_checkpoint(Trainer(tiny_config(image_folder, tmp_path / "probe")).train_step,
                                          str(checkpoint)).global_step
    assert stopped_at == max(record["global_step"] for record in read_log(tmp_path, "train"))
    resumed = subprocess.run(_train_command(image_folder, tmp_path, epochs=1000, resume="auto",
                                            max_steps=stopped_at + 2), cwd=REPO, env=env, capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    steps = [record["global_step"] for record in read_log(tmp_path, "train")]
    assert steps == list(range(1, stopped_at + 3))

