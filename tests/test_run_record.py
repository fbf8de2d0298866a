"""What a training run recorded is what later commands use: export and evaluation of a checkpoint in
a run's folder take the class names, model and preprocessing the run recorded, not today's folders
or a generic config (docs/outputs.md)."""
import logging

import mindspore as ms
import pytest
import yaml

import dvt_ms
from dvt_ms.calibrate import __main__ as calibrate_cli
from dvt_ms.export import __main__ as export_cli
from dvt_ms.runrecord import config_for_checkpoint, run_folder_of
from dvt_ms.train.run_folder import inspect_run_folder
from test_training import NUM_CLASSES, TINY, tiny_config

TRAINED_NAMES = ["circle", "crescent", "cross", "ring"]


@pytest.fixture()
def trained_run(tmp_path, make_class_folders):
    """A run folder as training leaves it (run.json and config.yaml written by the run-folder code,
    a checkpoint beside them) over class folders named TRAINED_NAMES; then the user renames one."""
    data = tmp_path / "data"
    make_class_folders(data / "train", NUM_CLASSES, per_class=2)
    make_class_folders(data / "val", NUM_CLASSES, per_class=2, seed=1)
    for split in ("train", "val"):
        for k, name in enumerate(TRAINED_NAMES):
            (data / split / f"c{k}").rename(data / split / name)
    run = tmp_path / "run"
    config = tiny_config(data, run, class_names=TRAINED_NAMES, crop_pct=1.0)
    folder = inspect_run_folder(str(run), None, False)
    folder.claim(config.as_dict(), {"resume": None})
    folder.release()
    architecture = {key: TINY[key] for key in ("embed_dim", "depth", "num_heads", "mlp_ratio", "img_size",
                                               "num_classes")}
    model = dvt_ms.create_model("dvt_deit_small", patch_grids=tuple(TINY["patch_grids"]), **architecture)
    ms.save_checkpoint(model, str(run / "best.ckpt"))
    for split in ("train", "val"):
        (data / split / "crescent").rename(data / split / "moon")
    generic = tmp_path / "generic.yaml"   # like configs/tiny_cpu.yaml: no class names, default crop
    generic.write_text(yaml.safe_dump({**TINY, "data_dir": str(data), "output_dir": str(tmp_path / "other")}))
    return data, run, generic


def test_a_checkpoint_in_a_run_folder_takes_the_runs_recorded_config(trained_run, caplog):
    data, run, generic = trained_run
    assert run_folder_of(run / "best.ckpt") == str(run) and run_folder_of(generic) is None
    with caplog.at_level(logging.WARNING):
        config, folder = config_for_checkpoint(str(generic), str(run / "best.ckpt"))
    assert folder == str(run) and config.class_names == tuple(TRAINED_NAMES) and config.crop_pct == 1.0
    assert any("class_names" in message and "crop_pct" in message for message in caplog.messages)
    overridden, _ = config_for_checkpoint(str(generic), str(run / "best.ckpt"), {"crop_pct": 0.9})
    assert overridden.crop_pct == 0.9   # what the user types on the command line still wins


def test_export_labels_the_heads_with_the_names_the_run_trained_on(trained_run, tmp_path):
    data, run, generic = trained_run
    assert export_cli.main([str(generic), "--ckpt", str(run / "best.ckpt"), "--out", str(tmp_path / "mindir")]) == 0
    manifest = yaml.safe_load((tmp_path / "mindir" / "manifest.yaml").read_text())
    assert manifest["class_names"] == TRAINED_NAMES   # not [circle, cross, moon, ring] from today's folders
    assert manifest["preprocess"]["crop_pct"] == 1.0


def test_export_without_class_names_says_so(tmp_path, caplog):
    checkpoint = tmp_path / "loose.ckpt"
    architecture = {key: TINY[key] for key in ("embed_dim", "depth", "num_heads", "mlp_ratio", "img_size",
                                               "num_classes")}
    ms.save_checkpoint(dvt_ms.create_model("dvt_deit_small", patch_grids=tuple(TINY["patch_grids"]), **architecture),
                       str(checkpoint))
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({**TINY, "data_dir": str(tmp_path / "nowhere")}))
    with caplog.at_level(logging.WARNING):
        assert export_cli.main([str(config), "--ckpt", str(checkpoint), "--out", str(tmp_path / "mindir")]) == 0
    assert any("has no class names" in message for message in caplog.messages)


def test_evaluation_maps_labels_by_the_runs_class_names(trained_run, tmp_path, capsys):
    data, run, generic = trained_run
    code = calibrate_cli.main([str(generic), "--ckpt", str(run / "best.ckpt"), "--data", str(data),
                               "--out", str(tmp_path / "report")])
    assert code == 2   # the renamed folder is a class the model never learned: named, not mislabelled
    assert "moon" in capsys.readouterr().err
    assert not (tmp_path / "report").exists()
