"""The converter: published-format reading, its safety, and its error cases (nothing written on error)."""
import os
import pickle
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import yaml

from dvt_ms.convert import convert_checkpoint, published_results_path
from dvt_ms.errors import CheckpointFormatError, ConversionError, UnsafeCheckpointError
from dvt_ms.convert import load_torch_checkpoint
from helpers import GOLDEN_MODELS, golden_overrides
from torch_format import save_torch_checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _golden(golden_dir):
    return load_torch_checkpoint(golden_dir / "t2t.pth.tar")


def _assert_nothing_written(directory):
    assert sorted(os.listdir(directory)) == ["src.pth.tar"], "a failed conversion left files behind"


def _convert(golden_dir, tmp_path, checkpoint=None, **extra_overrides):
    src = tmp_path / "src.pth.tar"
    if checkpoint is not None:
        save_torch_checkpoint(src, checkpoint)
    else:
        src.write_bytes((golden_dir / "t2t.pth.tar").read_bytes())
    overrides = golden_overrides(golden_dir, "t2t")
    overrides.update(extra_overrides)
    return convert_checkpoint(src, tmp_path / "dst.ckpt", GOLDEN_MODELS["t2t"], overrides)


def test_reader_returns_the_published_structure(golden_dir):
    checkpoint = _golden(golden_dir)
    assert set(checkpoint) == {"model_state_dict", "flops", "anytime_classification", "dynamic_threshold",
                               "budgeted_batch_classification"}
    assert checkpoint["dynamic_threshold"].shape == (59, 3)
    assert checkpoint["model_state_dict"]["less_token.blocks.0.attn.qkv.weight"].shape == (192, 64)


def test_round_trip_through_our_writer_is_exact(golden_dir, tmp_path):
    checkpoint = _golden(golden_dir)
    save_torch_checkpoint(tmp_path / "copy.pth.tar", checkpoint)
    again = load_torch_checkpoint(tmp_path / "copy.pth.tar")
    for key, value in checkpoint["model_state_dict"].items():
        np.testing.assert_array_equal(again["model_state_dict"][key], value)


def test_cli_writes_checkpoint_and_published_results(golden_dir, tmp_path):
    overrides = [f"{k}={v}" for k, v in golden_overrides(golden_dir, "t2t").items()]
    dst = tmp_path / "t2t.ckpt"
    cmd = [sys.executable, "-m", "dvt_ms.convert", str(golden_dir / "t2t.pth.tar"), str(dst),
           "--model", "dvt_t2t_vit_12", *overrides]
    subprocess.run(cmd, check=True, cwd=REPO, capture_output=True)
    results = yaml.safe_load(open(published_results_path(dst)))
    published = _golden(golden_dir)
    assert results["model"] == "dvt_t2t_vit_12"
    np.testing.assert_allclose(results["flops"], published["flops"])
    np.testing.assert_allclose(results["anytime_classification"], published["anytime_classification"])
    np.testing.assert_array_equal(np.asarray(results["dynamic_threshold"], np.float32), published["dynamic_threshold"])
    assert len(results["dynamic_threshold"]) == 59


def test_missing_key_is_named_and_nothing_written(golden_dir, tmp_path):
    checkpoint = _golden(golden_dir)
    del checkpoint["model_state_dict"]["normal_token.blocks.1.attn.proj.bias"]
    with pytest.raises(ConversionError, match=r"missing keys.*stages\.2\.blocks\.1\.attn\.proj\.bias"):
        _convert(golden_dir, tmp_path, checkpoint)
    _assert_nothing_written(tmp_path)


def test_unexpected_key_is_named_and_nothing_written(golden_dir, tmp_path):
    checkpoint = _golden(golden_dir)
    checkpoint["model_state_dict"]["less_token.blocks.0.attn.extra"] = np.zeros(3, np.float32)
    with pytest.raises(ConversionError, match=r"unexpected keys.*less_token\.blocks\.0\.attn\.extra"):
        _convert(golden_dir, tmp_path, checkpoint)
    _assert_nothing_written(tmp_path)


def test_wrong_shape_is_named_and_nothing_written(golden_dir, tmp_path):
    with pytest.raises(ConversionError, match=r"wrongly shaped.*head\.weight: checkpoint \(10, 64\), model \(7, 64\)"):
        _convert(golden_dir, tmp_path, num_classes=7)
    _assert_nothing_written(tmp_path)


@pytest.mark.parametrize("family, wrong_model", [("t2t", "dvt_deit_small"), ("deit", "dvt_t2t_vit_12")])
def test_a_checkpoint_of_the_other_family_is_named_briefly(golden_dir, tmp_path, family, wrong_model):
    src = tmp_path / "src.pth.tar"
    src.write_bytes((golden_dir / f"{family}.pth.tar").read_bytes())
    result = subprocess.run([sys.executable, "-m", "dvt_ms.convert", str(src), str(tmp_path / "dst.ckpt"),
                             "--model", wrong_model], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"looks like a DVT {family} checkpoint" in result.stderr
    assert f"--model {GOLDEN_MODELS[family]}" in result.stderr and len(result.stderr) < 400
    _assert_nothing_written(tmp_path)


def test_many_mismatched_keys_are_counted_with_a_few_named(golden_dir, tmp_path):
    with pytest.raises(ConversionError) as raised:
        _convert(golden_dir, tmp_path, num_classes=7)
    message = str(raised.value)
    assert "6 wrongly shaped keys" in message and "and 1 more" in message and len(message) < 1000
    assert len(raised.value.mismatches["wrongly_shaped"]) == 6   # all of them, for whoever needs them
    assert any("normal_token.head.bias" in entry for entry in raised.value.mismatches["wrongly_shaped"])


def test_switched_off_reuse_path_reports_its_keys(golden_dir, tmp_path):
    with pytest.raises(ConversionError, match=r"unexpected keys.*relation_reuse_conv"):
        _convert(golden_dir, tmp_path, relation_reuse=False)
    _assert_nothing_written(tmp_path)


def test_file_that_is_not_a_checkpoint(golden_dir, tmp_path):
    src = tmp_path / "src.pth.tar"
    src.write_text("hello, not a zip")
    with pytest.raises(CheckpointFormatError, match="not a PyTorch checkpoint"):
        convert_checkpoint(src, tmp_path / "dst.ckpt", "dvt_t2t_vit_12", golden_overrides(golden_dir, "t2t"))
    _assert_nothing_written(tmp_path)
    with pytest.raises(CheckpointFormatError, match="no such file"):
        load_torch_checkpoint(tmp_path / "absent.pth.tar")


def test_checkpoint_without_model_state_dict(golden_dir, tmp_path):
    with pytest.raises(CheckpointFormatError, match="model_state_dict"):
        _convert(golden_dir, tmp_path, {"state_dict": {"a": np.zeros(2, np.float32)}})
    _assert_nothing_written(tmp_path)


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_pickle_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    src = tmp_path / "evil.pth.tar"
    with zipfile.ZipFile(src, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps({"model_state_dict": _RunsCode(marker)}, protocol=2))
    with pytest.raises(UnsafeCheckpointError, match=r"refusing to load '(posix|os)\.system'"):
        load_torch_checkpoint(src)
    assert not marker.exists()


def test_cli_reports_errors_with_exit_code_2(golden_dir, tmp_path):
    dst = tmp_path / "x.ckpt"
    result = subprocess.run([sys.executable, "-m", "dvt_ms.convert", str(golden_dir / "t2t.json"), str(dst),
                             "--model", "dvt_t2t_vit_12"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 2
    assert "t2t.json" in result.stderr and "not a PyTorch checkpoint" in result.stderr
    assert not dst.exists()
