"""Training on CPU in GRAPH_MODE with a very small cascade: the loss falls, a resumed run continues
exactly, msrun data parallel keeps the ranks identical. (Data problems: tests/test_data.py.)"""
import json
import os
import pathlib
import shutil
import socket
import subprocess

import mindspore as ms
import numpy as np

import dvt_ms
import pytest
from mindspore import nn

from dvt_ms.checkpoint import load_pretrained, store
from dvt_ms.train.checkpoints import CheckpointManager, TrainingState, load_training_checkpoint
from dvt_ms.config import load_config
from dvt_ms.data import epoch_indices, make_loader, open_dataset
from dvt_ms.errors import CheckpointError, DataError
from dvt_ms.train.trainer import NonFiniteLossError, Trainer

REPO = pathlib.Path(__file__).resolve().parents[1]
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


def tiny_config(data_dir, output_dir, **overrides):
    return load_config(overrides={**TINY, "data_dir": str(data_dir), "output_dir": str(output_dir), **overrides})


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


def test_mixed_precision_with_dynamic_loss_scale(image_folder, tmp_path):
    """The Ascend/GPU path (float16 O2, dynamic loss scaling, EMA, clipping) also compiles and trains on CPU."""
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
def test_msrun_two_workers_keep_identical_weights(image_folder, tmp_path):
    logs = tmp_path / "msrun_logs"
    result = run_script("configs/tiny_cpu.yaml", "--num_devices", 2, "--master_port", free_port(),
                        "--log_dir", logs, *as_overrides(TINY, batch_size=4, epochs=1),
                        f"data_dir={image_folder}", f"output_dir={tmp_path / 'out'}", timeout=400)
    worker_logs = {path.name: path.read_text() for path in logs.glob("worker_*.log")}
    assert result.returncode == 0, result.stderr[-3000:] + "".join(text[-2000:] for text in worker_logs.values())
    assert set(worker_logs) == {"worker_0.log", "worker_1.log"}
    start = read_log(tmp_path / "out", "start")[0]
    assert start["world_size"] == 2 and start["steps_per_epoch"] == 4  # 32 images / 2 ranks / batch 4
    agreement = read_log(tmp_path / "out", "rank_agreement")[-1]
    fingerprints = np.array(agreement["fingerprints"])
    assert fingerprints.shape[0] == 2
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


@pytest.mark.slow
def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(image_folder, tmp_path):
    config = tiny_config(image_folder, tmp_path, lr=1e38, min_lr=0.0, save_every_steps=1, epochs=2)
    trainer = Trainer(config)
    with pytest.raises(NonFiniteLossError) as raised:
        trainer.fit()
    message = str(raised.value)
    assert "non-finite loss" in message and "Last good checkpoint" in message
    checkpoints = sorted(tmp_path.glob("step_*.ckpt"))
    assert checkpoints and str(checkpoints[-1]) in message
    stopped_at = int(checkpoints[-1].stem.split("_")[1]) + 1
    assert f"global step {stopped_at}" in message
    state = load_training_checkpoint(Trainer(config).train_step, str(checkpoints[-1]))
    assert state.global_step == stopped_at - 1
