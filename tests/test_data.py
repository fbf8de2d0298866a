"""Data: images checked once (cached, shared by the ranks), formats MindSpore's decoder rejects,
labels by class name, held-out images, nothing replaced silently, exact mid-epoch resume."""
import io
import json
import logging
import os
import pathlib
import threading
import time

import mindspore as ms
import numpy as np
import pytest
import yaml
from PIL import Image

import dvt_ms
from dvt_ms.calibrate import __main__ as calibrate_cli
from dvt_ms.data import (HOLDOUT_FILE, ImageCheck, SampleTracker, checked_batches, epoch_indices, imagecheck,
                         make_loader, open_dataset, open_training_data)
from dvt_ms.errors import DataError
from dvt_ms.train.trainer import Trainer
from test_training import NUM_CLASSES, TINY, losses_by_step, tiny_config

CLASSES = [f"c{k}" for k in range(NUM_CLASSES)]


def to_webp(folder, names=None):
    """Convert the PNGs of ``folder`` (or those named) to WebP; returns the new paths."""
    converted = []
    for path in sorted(pathlib.Path(folder).glob("*.png")):
        if names is None or path.name in names:
            target = path.with_suffix(".webp")
            Image.open(path).save(target, format="WEBP", quality=90)
            path.unlink()
            converted.append(target)
    return converted


def scrambled_jpeg(path, size=(64, 48)):
    """A JPEG with intact header and end marker but zeros for image data: the kind of file that makes
    MindSpore's decoder raise SIGFPE (so never decode it with MindSpore in a test)."""
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buffer, format="JPEG")
    data = buffer.getvalue()
    path.write_bytes(data[:len(data) // 2] + bytes(4000) + data[-2:])


def read_all(split, config, is_training=False, order=None):
    """Every batch of a pipeline over ``order`` (default: all samples): labels, index column, tracker."""
    order = np.arange(split.num_samples) if order is None else np.asarray(order)
    loader = make_loader(split, order, config, 32, split.num_classes, is_training, num_workers=1)
    tracker = SampleTracker(split, order, "test")
    labels = []
    for _, batch_labels, fresh in checked_batches(loader, tracker):
        labels.append(batch_labels.asnumpy()[fresh])
    return np.concatenate(labels), tracker


@pytest.fixture()
def folders(tmp_path, make_class_folders):
    """``root/train`` (4 classes x 8) and ``root/val`` (4 x 2) class folders of PNGs."""
    make_class_folders(tmp_path / "data" / "train", NUM_CLASSES, per_class=8)
    make_class_folders(tmp_path / "data" / "val", NUM_CLASSES, per_class=2, seed=1)
    return tmp_path / "data"


# ---------------------------------------------------------------- formats and bad images

def test_webp_images_are_trained_on_with_their_labels(folders, tmp_path):
    """Two classes in WebP (one file of them named .jpg): every sample arrives, with its own label."""
    to_webp(folders / "train" / "c0")
    webp_named_jpg = to_webp(folders / "train" / "c1")[0]
    webp_named_jpg.rename(webp_named_jpg.with_suffix(".jpg"))
    config = tiny_config(folders, tmp_path / "out")
    train, _ = open_training_data(config, NUM_CLASSES)
    assert train.num_samples == NUM_CLASSES * 8
    labels, tracker = read_all(train, config, is_training=True)
    assert tracker.replaced == [] and tracker.copies == 0
    np.testing.assert_array_equal(np.sort(labels), np.sort(train.labels))
    assert np.count_nonzero(labels == 0) == np.count_nonzero(labels == 1) == 8


def test_webp_pixels_are_pillows_decode(tmp_path):
    """The pipeline sees a WebP image exactly as Pillow decodes it (as inference does)."""
    webp = tmp_path / "data" / "val" / "c0" / "image.webp"
    webp.parent.mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(webp, format="WEBP", quality=80)
    png = tmp_path / "data" / "val" / "c1" / "image.png"
    png.parent.mkdir(parents=True)
    Image.open(webp).convert("RGB").save(png)
    config = tiny_config(tmp_path / "data", tmp_path / "out", num_classes=2)
    split = open_dataset(config, "val")
    (images, _, _), = make_loader(split, np.arange(2), config, 32, 2, False, 1).create_tuple_iterator(
        output_numpy=True)
    np.testing.assert_array_equal(images[0], images[1])


def test_unreadable_images_are_named_and_left_out(folders, caplog):
    folder = folders / "train" / "c0"
    good = (folder / "000.png").read_bytes()
    (folder / "truncated.png").write_bytes(good[: len(good) // 2])
    (folder / "garbage.jpg").write_bytes(b"not an image at all" * 10)
    (folder / "empty.jpeg").write_bytes(b"")
    Image.new("RGB", (32, 32), (10, 20, 30)).save(folder / "cut.jpg", format="JPEG")
    data = (folder / "cut.jpg").read_bytes()
    (folder / "cut.jpg").write_bytes(data[: len(data) - 100])  # JPEG without its end
    scrambled_jpeg(folder / "scrambled.jpg")  # passes a header + end-marker check; only decoding finds it
    with caplog.at_level(logging.WARNING, logger="dvt_ms.data"):
        split = open_dataset(tiny_config(folders, "unused"), "train")
    assert split.num_samples == NUM_CLASSES * 8
    for name in ("truncated.png", "garbage.jpg", "empty.jpeg", "cut.jpg", "scrambled.jpg"):
        assert any(str(folder / name) in message for message in caplog.messages), name
    assert any("left out 5 of 37 images" in message for message in caplog.messages)


def test_a_class_without_one_readable_image_is_an_error_naming_it(folders):
    for path in (folders / "train" / "c2").iterdir():
        path.write_bytes(b"broken")
    with pytest.raises(DataError, match=r"no usable image left in class folder\(s\) c2"):
        open_dataset(tiny_config(folders, "unused"), "train")


def test_images_the_pipeline_cannot_decode_are_named_and_counted(folders, caplog):
    """Unchecked (verify_images false), broken files reach the pipeline: each one is named, counted,
    and its stand-in copy is marked, so evaluation can leave it out."""
    folder = folders / "train" / "c1"
    good = (folder / "000.png").read_bytes()
    for index in range(3):
        (folder / f"truncated_{index}.png").write_bytes(good[: len(good) // 3])
    config = tiny_config(folders, "unused", verify_images=False)
    split = open_dataset(config, "train")
    assert split.num_samples == NUM_CLASSES * 8 + 3
    with caplog.at_level(logging.WARNING, logger="dvt_ms.data"):
        labels, tracker = read_all(split, config)
    replaced = sorted(split.describe(i) for i in tracker.replaced)
    assert replaced == sorted(str(folder / f"truncated_{index}.png") for index in range(3))
    assert len(labels) == NUM_CLASSES * 8  # the copies are marked, not counted
    for path in replaced:
        assert any(path in message for message in caplog.messages)
    assert any("3 of 35 images were replaced" in message for message in caplog.messages)


def test_a_class_the_pipeline_cannot_read_at_all_stops_with_its_name(folders):
    config = tiny_config(folders, "unused", verify_images=False)
    for path in (folders / "train" / "c3").iterdir():
        path.write_bytes(path.read_bytes()[:100])
    split = open_dataset(config, "train")
    with pytest.raises(DataError, match=r"no image of class\(es\) c3 could be read"):
        read_all(split, config)


def test_a_file_deleted_after_listing_is_named_not_fatal(folders, caplog):
    config = tiny_config(folders, "unused")
    split = open_dataset(config, "train")
    gone = folders / "train" / "c2" / "003.png"
    gone.unlink()
    with caplog.at_level(logging.WARNING, logger="dvt_ms.data"):
        labels, tracker = read_all(split, config)
    assert [split.describe(i) for i in tracker.replaced] == [str(gone)]
    assert len(labels) == split.num_samples - 1
    assert any(f"{gone} cannot be read: FileNotFoundError" in message for message in caplog.messages)


def test_sample_tracker_finds_dropped_samples_and_copies():
    """MindSpore's replace mode drops a failing sample and inserts a copy of a good one later."""
    class Split:
        num_samples, labels, class_names = 8, np.array([0, 0, 1, 1, 0, 0, 1, 1]), ["a", "b"]

        def describe(self, index):
            return f"#{index}"

    tracker = SampleTracker(Split(), [5, 0, 1, 2, 3, 4, 6, 7], "test")
    np.testing.assert_array_equal(tracker.update([5, 0, 3, 4]), [True, True, True, True])   # 1, 2 dropped
    np.testing.assert_array_equal(tracker.update([6, 5, 0, -1]), [True, False, False, False])
    tracker.finish()  # 7 never came
    assert tracker.replaced == [1, 2, 7] and tracker.copies == 3


# ---------------------------------------------------------------- the native pipeline

def test_pipeline_reads_exactly_the_given_samples_in_order(folders):
    config = tiny_config(folders, "unused")
    split = open_dataset(config, "train")
    order = epoch_indices(split.num_samples, epoch=3, seed=0, rank=1, world_size=2, shuffle=True)
    loader = make_loader(split, order, config, 32, split.num_classes, is_training=False, num_workers=2)
    index, labels = [], []
    for _, batch_labels, batch_index in loader.create_tuple_iterator(output_numpy=True):
        index.extend(batch_index.tolist())
        labels.extend(batch_labels.tolist())
    assert index == order.tolist()
    assert labels == split.labels[order].tolist()


# ---------------------------------------------------------------- labels by class name

def test_validation_labels_follow_class_names_not_folder_order(folders, tmp_path, caplog):
    """val holds only c1 and c3: sorted, they would be labels 0 and 1; by name they are 1 and 3."""
    for name in ("c0", "c2"):
        for path in (folders / "val" / name).iterdir():
            path.unlink()
        (folders / "val" / name).rmdir()
    config = tiny_config(folders, tmp_path / "out", val_every_epochs=1)
    with caplog.at_level(logging.WARNING, logger="dvt_ms.data"):
        train, val = open_training_data(config, NUM_CLASSES)
    assert train.class_names == val.class_names == CLASSES
    assert val.labels.tolist() == [1, 1, 3, 3]
    labels, _ = read_all(val, config)
    assert labels.tolist() == [1, 1, 3, 3]
    assert any("no images of 2 of the 4 classes" in message and "c0, c2" in message for message in caplog.messages)


def test_a_validation_class_unknown_to_training_is_an_error_naming_it(folders, tmp_path):
    (folders / "val" / "c0").rename(folders / "val" / "zero")
    config = tiny_config(folders, tmp_path / "out", val_every_epochs=1)
    with pytest.raises(DataError, match=r"class folder\(s\) zero are not classes of the training split") as raised:
        open_training_data(config, NUM_CLASSES)
    assert "num_classes" not in str(raised.value)


def test_a_resumed_run_keeps_its_recorded_class_names(folders, tmp_path):
    """Labels keep their meaning across a resume even if the training folders changed meanwhile."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.yaml").write_text(yaml.safe_dump({"class_names": ["c0", "c1", "c2", "c3"]}))
    (folders / "train" / "c0").rename(folders / "train" / "a0")
    with pytest.raises(DataError, match=r"a0 are not classes of the run being resumed"):
        open_training_data(tiny_config(folders, out, resume="auto"), NUM_CLASSES)
    train, _ = open_training_data(tiny_config(folders, out), NUM_CLASSES)   # a fresh run: the folders decide
    assert train.class_names == ["a0", "c1", "c2", "c3"]


def test_class_names_in_the_config_decide_the_labels(folders, tmp_path):
    names = ["c3", "c2", "c1", "c0"]
    train, _ = open_training_data(tiny_config(folders, tmp_path / "out", class_names=names), NUM_CLASSES)
    assert train.class_names == names
    assert train.labels[[0, -1]].tolist() == [3, 0]  # c0's images come first in the listing


# ---------------------------------------------------------------- held-out images

def test_held_out_images_are_recorded_and_never_trained_on(folders, tmp_path, make_class_folders):
    out = tmp_path / "out"
    config = tiny_config(folders, out, holdout_per_class=3)
    train, _ = open_training_data(config, NUM_CLASSES)
    record = json.loads((out / HOLDOUT_FILE).read_text())
    assert (record["per_class"], record["seed"], record["split"]) == (3, 0, "train")
    held = record["files"]
    assert len(held) == len(set(held)) == 3 * NUM_CLASSES
    assert sorted({rel.split("/")[0] for rel in held}) == CLASSES
    assert train.num_samples == 5 * NUM_CLASSES and not set(held) & set(train.files)
    # a resumed run holds out the very same images, even with new files in the folder
    make_class_folders(folders / "train", NUM_CLASSES, per_class=12, seed=5)
    resumed, _ = open_training_data(config, NUM_CLASSES)
    assert not set(held) & set(resumed.files) and resumed.num_samples == 12 * NUM_CLASSES - len(held)
    with pytest.raises(DataError, match=r"holdout.json holds out 3 images per class.*holdout_per_class 2"):
        open_training_data(tiny_config(folders, out, holdout_per_class=2), NUM_CLASSES)
    with pytest.raises(DataError, match=r"holdout.json holds out 3 images.*holdout_per_class 0"):
        open_training_data(tiny_config(folders, out), NUM_CLASSES)


def test_a_hold_out_leaving_a_class_no_training_image_is_an_error(folders, tmp_path):
    with pytest.raises(DataError, match="class c0 has 8 usable image.*holdout_per_class 8 would leave none"):
        open_training_data(tiny_config(folders, tmp_path / "out", holdout_per_class=8), NUM_CLASSES)
    assert not (tmp_path / "out" / HOLDOUT_FILE).exists()


# ---------------------------------------------------------------- the image check: cached, shared

def count_checks(monkeypatch):
    checked = []
    original = imagecheck.verify_image

    def counting(path):
        checked.append(os.path.basename(path))
        return original(path)

    monkeypatch.setattr(imagecheck, "verify_image", counting)
    return checked


def test_image_check_is_cached_and_only_changed_files_are_checked_again(folders, tmp_path, monkeypatch):
    checked = count_checks(monkeypatch)
    root = str(folders / "train")
    first = ImageCheck(tmp_path / "cache").split(root)
    assert len(checked) == NUM_CLASSES * 8
    checked.clear()
    assert ImageCheck(tmp_path / "cache").split(root) == first and checked == []
    changed = folders / "train" / "c1" / "002.png"
    changed.write_bytes(changed.read_bytes()[:50])   # same name, new size: checked again, now unreadable
    (folders / "train" / "c2" / "new.png").write_bytes((folders / "train" / "c2" / "000.png").read_bytes())
    folders_now, files = ImageCheck(tmp_path / "cache").split(root)
    assert sorted(checked) == ["002.png", "new.png"]
    problems = {rel: problem for rel, problem in files if problem}
    assert list(problems) == ["c1/002.png"]


def test_other_ranks_wait_for_rank_0s_check_and_read_it(folders, tmp_path, monkeypatch):
    checked = count_checks(monkeypatch)
    root = str(folders / "train")
    ImageCheck(tmp_path / "cache", token=1).split(root)  # an earlier start: its result must not be taken
    checked.clear()
    results = {}
    reader = threading.Thread(target=lambda: results.update(
        reader=ImageCheck(tmp_path / "cache", writer=False, token=2, wait_seconds=60).split(root)))
    reader.start()
    reader.join(timeout=1.0)
    assert reader.is_alive()   # still waiting: no result of this start (token 2) yet
    results["writer"] = ImageCheck(tmp_path / "cache", token=2).split(root)
    reader.join(timeout=30)
    assert not reader.is_alive() and results["reader"] == results["writer"]
    assert checked == []   # nothing changed since the earlier start, and the reader checked nothing


def test_a_listing_error_reaches_the_waiting_ranks(folders, tmp_path):
    (folders / "train" / "c9").mkdir()
    root = str(folders / "train")
    with pytest.raises(DataError, match="c9 has no images"):
        ImageCheck(tmp_path / "cache", token=7).split(root)
    with pytest.raises(DataError, match="c9 has no images"):
        ImageCheck(tmp_path / "cache", writer=False, token=7, wait_seconds=60).split(root)


def test_a_rank_waiting_for_a_check_that_never_comes_gives_up_naming_the_file(folders, tmp_path):
    """As on a node whose output_dir is not the one rank 0 writes to."""
    root = str(folders / "train")
    reader = ImageCheck(tmp_path / "cache", writer=False, token=3, wait_seconds=0.5)
    started = time.monotonic()
    with pytest.raises(DataError) as error:
        reader.split(root)
    assert 0.5 <= time.monotonic() - started < 10
    message = str(error.value)
    assert str(tmp_path / "cache") in message and ".ready never appeared" in message
    assert "output_dir must be on a filesystem every node shares" in message and "image_check_wait_minutes" in message


# ---------------------------------------------------------------- calibration images, said truthfully

@pytest.fixture()
def tiny_checkpoint(tmp_path):
    architecture = {key: TINY[key] for key in ("embed_dim", "depth", "num_heads", "mlp_ratio", "img_size",
                                               "num_classes")}
    model = dvt_ms.create_model("dvt_deit_small", patch_grids=tuple(TINY["patch_grids"]), **architecture)
    path = tmp_path / "tiny.ckpt"
    ms.save_checkpoint(model, str(path))
    return path


def run_eval(folders, tmp_path, checkpoint, *args, **config):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({**TINY, "output_dir": str(tmp_path / "out"), **config}))
    assert calibrate_cli.main([str(path), "--ckpt", str(checkpoint), "--data", str(folders),
                               "--out", str(tmp_path / "report"), "--overwrite", *args]) == 0
    return yaml.safe_load((tmp_path / "report" / "thresholds.yaml").read_text())["calibration"]


def test_calibration_on_training_images_says_so_and_never_caps_silently(folders, tmp_path, tiny_checkpoint,
                                                                       capsys, caplog):
    with caplog.at_level(logging.INFO):
        calibration = run_eval(folders, tmp_path, tiny_checkpoint, "--calib_size", "300")
    assert calibration == {"images": 32, "source": "training images (seen in training)"}
    assert "calibration: 32 training images (seen in training)" in capsys.readouterr().out
    messages = caplog.messages
    assert any("--calib_size 300 but there are only 32 training images" in message for message in messages)
    assert "calibration: 32 images scored" in messages   # progress states the real total


def test_calibration_uses_the_runs_held_out_images_by_default(folders, tmp_path, tiny_checkpoint, capsys):
    config = tiny_config(folders, tmp_path / "out", holdout_per_class=2)
    open_training_data(config, NUM_CLASSES)   # what a training run records
    calibration = run_eval(folders, tmp_path, tiny_checkpoint, holdout_per_class=2)
    assert calibration["images"] == 8 and calibration["source"].startswith("held-out training images (never trained")
    assert "calibration: 8 held-out training images" in capsys.readouterr().out
    calibration = run_eval(folders, tmp_path, tiny_checkpoint, "--calib_split", "train", holdout_per_class=2)
    assert calibration["images"] == 32 and "8 of its images were held out" in calibration["source"]


# ---------------------------------------------------------------- exact mid-epoch resume

@pytest.mark.slow
def test_mid_epoch_resume_with_random_augmentation_is_bit_identical(folders, tmp_path):
    """Random crops, flips and mixup/cutmix, one worker: the steps after a mid-epoch resume have the
    very losses of the uninterrupted run (the epoch's pipeline is replayed, not restarted)."""
    settings = dict(epochs=2, save_every_steps=3, keep_checkpoints=5, scale=[0.3, 1.0], ratio=[0.75, 1.33],
                    hflip=0.5, mixup=0.8, cutmix=1.0, num_workers=1)
    Trainer(tiny_config(folders, tmp_path / "whole", **settings)).fit()
    Trainer(tiny_config(folders, tmp_path / "resumed", resume=str(tmp_path / "whole" / "step_00000003.ckpt"),
                        **settings)).fit()
    whole, resumed = losses_by_step(tmp_path / "whole"), losses_by_step(tmp_path / "resumed")
    assert sorted(resumed) == [4, 5, 6, 7, 8]
    for step in resumed:
        assert resumed[step] == whole[step], f"step {step}"


@pytest.mark.slow
def test_with_more_workers_a_resumed_epoch_continues_with_the_same_batches(folders, tmp_path):
    """Two workers (augmentation draws not reproducible): the resumed epoch starts at the first batch
    not trained on; with deterministic transforms its steps equal the uninterrupted run's."""
    settings = dict(epochs=2, save_every_steps=3, keep_checkpoints=5, num_workers=2)
    Trainer(tiny_config(folders, tmp_path / "whole", **settings)).fit()
    Trainer(tiny_config(folders, tmp_path / "resumed", resume=str(tmp_path / "whole" / "step_00000003.ckpt"),
                        **settings)).fit()
    whole, resumed = losses_by_step(tmp_path / "whole"), losses_by_step(tmp_path / "resumed")
    assert sorted(resumed) == [4, 5, 6, 7, 8]
    for step in resumed:
        np.testing.assert_allclose(resumed[step], whole[step], rtol=1e-6, err_msg=f"step {step}")
