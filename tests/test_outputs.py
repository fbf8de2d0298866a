"""Nothing a user made is lost: output paths are checked before any work, outputs get the umask's
modes, a full disk stops cleanly, and what killed writers leave behind is cleaned up."""
import errno
import os
import pathlib
import socket
import subprocess
import sys

import pytest
from mindspore import nn

from dvt_ms import fileio
from dvt_ms.checkpoint import store
from dvt_ms.errors import DiskFullError, OutputPathError
from dvt_ms.calibrate.report import REPORT_FOLDER
from dvt_ms.deploy.infer import RESULTS_FILE, SUMMARY_FILE, write_results
from dvt_ms.export.writer import EXPORT_FOLDER
from dvt_ms.fileio import (atomic_write_text, check_distinct_outputs, check_output_dir, check_output_file,
                           remove_stale_temporaries, staged_directory)
from dvt_ms.train.checkpoints import CheckpointManager, TrainingState

REPO = pathlib.Path(__file__).resolve().parents[1]
IS_ROOT = os.geteuid() == 0


@pytest.fixture
def umask():
    """Set a umask for the test and restore the caller's afterwards."""
    original = os.umask(0o022)
    yield os.umask
    os.umask(original)


def mode(path):
    return os.stat(path).st_mode & 0o777


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o077])
def test_files_and_folders_we_write_take_the_umask_modes(tmp_path, umask, mask):
    umask(mask)
    atomic_write_text(tmp_path / "results.csv", "path,class\n")
    assert mode(tmp_path / "results.csv") == 0o666 & ~mask
    checkpoint = tmp_path / "weights.ckpt"
    store.atomic_save_checkpoint(nn.Dense(2, 2), str(checkpoint))   # MindSpore itself writes 0400
    assert mode(checkpoint) == 0o666 & ~mask
    with staged_directory(tmp_path / "export", EXPORT_FOLDER) as staging:
        (pathlib.Path(staging) / "graphs").mkdir()
        for name in ("exit1.mindir", "graphs/exit1.data", "manifest.yaml"):   # as MindSpore's exporter leaves them
            (pathlib.Path(staging) / name).write_bytes(b"x")
            os.chmod(pathlib.Path(staging) / name, 0o400)
        os.chmod(pathlib.Path(staging) / "graphs", 0o700)
    assert mode(tmp_path / "export") == mode(tmp_path / "export" / "graphs") == 0o777 & ~mask
    assert mode(tmp_path / "export" / "exit1.mindir") == mode(tmp_path / "export" / "graphs" / "exit1.data") \
        == 0o666 & ~mask


def test_output_file_checks_name_the_path_and_the_reason(tmp_path):
    (tmp_path / "a_file").write_text("mine")
    (tmp_path / "a_folder").mkdir()
    check_output_file(tmp_path / "new" / "deeper" / "results.csv", None)   # folders are created
    cases = [(tmp_path / "a_folder", "is a folder; give a file name"),
             (f"{tmp_path}/new_folder/", "is a folder; give a file name"),
             (tmp_path / "a_file" / "results.csv", f"{tmp_path / 'a_file'} is a file, not a folder"),
             (tmp_path / "a_file" / "x" / "results.csv", f"{tmp_path / 'a_file'} is a file, not a folder")]
    for path, reason in cases:
        with pytest.raises(OutputPathError) as raised:
            check_output_file(path)
        assert str(path).rstrip("/") in str(raised.value) and reason in str(raised.value)
    assert (tmp_path / "a_file").read_text() == "mine"


@pytest.mark.skipif(IS_ROOT, reason="root may write anywhere")
def test_unwritable_output_folders_are_named(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        with pytest.raises(OutputPathError, match=f"no permission to write in {locked}"):
            check_output_file(locked / "results.csv")
        with pytest.raises(OutputPathError, match=f"no permission to write in {locked}"):
            check_output_dir(locked / "run")
    finally:
        locked.chmod(0o755)


def test_output_folder_checks(tmp_path):
    (tmp_path / "a_file").write_text("mine")
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "per_exit.json").write_text("{}")
    with pytest.raises(OutputPathError, match="is a file, not a folder"):
        check_output_dir(tmp_path / "a_file")
    with pytest.raises(OutputPathError, match="a_file is a file, not a folder"):
        check_output_dir(tmp_path / "a_file" / "run", REPORT_FOLDER)
    (tmp_path / "report" / "thresholds.yaml").write_text("{}")
    with pytest.raises(OutputPathError, match="holds a calibration report \\(pass --overwrite"):
        check_output_dir(tmp_path / "report", REPORT_FOLDER)
    check_output_dir(tmp_path / "report", REPORT_FOLDER, overwrite=True)
    check_output_dir(tmp_path / "report")   # written in place (a run folder): fine


def _dead_pid():
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_stale_temporaries_of_killed_writers_are_removed_and_nothing_else(tmp_path):
    host, dead, ours = socket.gethostname(), _dead_pid(), os.getpid()
    old = fileio._STARTED - 3600
    stale = [f".dvt-tmp-{dead}@{host}-abcd1234.ckpt",
             f".dvt-tmp-{dead}@{host}-abcd1234.tmp",          # MindSpore's own temporary beside ours
             f".dvt-staging-{dead}@{host}-k2j4h5g6",
             ".tmp-q8w7e6r5.ckpt", ".staging-a1b2c3d4"]          # what earlier versions left
    kept = [f".dvt-tmp-{ours}@{host}-zzzz9999.ckpt",             # being written by this process
            ".tmp-notes.txt", "step_00000010.ckpt", ".staging-mine"]
    for name in stale + kept:
        path = tmp_path / name
        if "staging" in name:
            path.mkdir()
            (path / "exit1.mindir").write_bytes(b"partial")
        else:
            path.write_bytes(b"partial")
        if name.startswith((".tmp-", ".staging-")):
            os.utime(path, (old, old))   # from before this process started
    fresh_legacy = tmp_path / ".tmp-newer123.ckpt"
    fresh_legacy.write_bytes(b"maybe another old-version process is writing it")
    # An export whose replacement was killed between moving the old folder aside and moving the new in:
    (tmp_path / f".dvt-replaced-{dead}@{host}:model").mkdir()
    (tmp_path / f".dvt-replaced-{dead}@{host}:model" / "manifest.yaml").write_text("the user's model")

    removed = remove_stale_temporaries(tmp_path)

    assert sorted(removed) == sorted(stale)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept + [fresh_legacy.name, "model"])
    assert (tmp_path / "model" / "manifest.yaml").read_text() == "the user's model"


def test_a_full_disk_while_saving_names_the_path_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    cell = nn.Dense(3, 2)
    manager = CheckpointManager(str(tmp_path), keep=3)
    manager.save(cell, TrainingState(global_step=10, steps_per_epoch=5))
    good = (tmp_path / "step_00000010.ckpt").read_bytes()

    def disk_fills_up(cell, path, **kwargs):
        # MindSpore writes <name>.tmp first and renames it; the disk fills up half way.
        pathlib.Path(os.path.splitext(path)[0] + ".tmp").write_bytes(good[: len(good) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store.ms, "save_checkpoint", disk_fills_up)
    with pytest.raises(DiskFullError) as raised:
        manager.save(cell, TrainingState(global_step=20, steps_per_epoch=5))
    message = str(raised.value)
    assert str(tmp_path / "step_00000020.ckpt") in message and "free in" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_00000010.ckpt"]
    assert (tmp_path / "step_00000010.ckpt").read_bytes() == good


def _run_cli(module, argv, capsys):
    code = module.main(argv)
    captured = capsys.readouterr()
    return code, captured.err


def test_every_command_checks_its_output_paths_before_any_work(tmp_path, capsys):
    """Each command gets inputs that do not exist: if it started its work before checking where
    its output goes, it would complain about them instead."""
    from dvt_ms.calibrate import __main__ as calibrate
    from dvt_ms.convert import __main__ as convert
    from dvt_ms.deploy import __main__ as deploy
    from dvt_ms.export import __main__ as export
    from dvt_ms.train import __main__ as train

    a_file = tmp_path / "a_file"
    a_file.write_text("mine")
    (tmp_path / "a_folder").mkdir()
    missing = tmp_path / "missing"
    config = str(REPO / "configs" / "tiny_cpu.yaml")
    runs = {
        "infer --out a folder": (deploy, ["--model", str(missing), str(missing), "--out", str(tmp_path / "a_folder")],
                                 "is a folder; give a file name"),
        "infer --summary under a file": (deploy, ["--model", str(missing), str(missing), "--summary",
                                                  str(a_file / "summary.json")], "is a file, not a folder"),
        "calibrate --out under a file": (calibrate, [config, "--ckpt", str(missing), "--data", str(missing),
                                                     "--out", str(a_file / "report")], "is a file, not a folder"),
        "calibrate --out is a file": (calibrate, [config, "--ckpt", str(missing), "--data", str(missing),
                                                  "--out", str(a_file)], "is a file, not a folder"),
        "export --out under a file": (export, [config, "--ckpt", str(missing), "--out", str(a_file / "model")],
                                      "is a file, not a folder"),
        "convert dst under a file": (convert, [str(missing), str(a_file / "x.ckpt"), "--model", "dvt_deit_small"],
                                     "is a file, not a folder"),
        "train output_dir under a file": (train, [config, f"data_dir={missing}", f"output_dir={a_file / 'run'}"],
                                          "is a file, not a folder"),
    }
    for name, (module, argv, reason) in runs.items():
        code, err = _run_cli(module, argv, capsys)
        assert code == 2, (name, err)
        assert err.startswith("error: ") and reason in err and "Traceback" not in err, (name, err)
        assert str(missing) not in err, (name, err)
    assert a_file.read_text() == "mine"


def test_env_sh_is_safe_to_source_in_an_interactive_shell(tmp_path):
    """Sourcing it changes no shell option: a failing command afterwards does not end the shell,
    and a failed setup returns instead of exiting."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(sys.executable)
    digest = subprocess.run(["sha256sum", str(REPO / "requirements.txt")], capture_output=True, text=True,
                            check=True).stdout.split()[0]
    (venv / ".requirements.sha256").write_text(digest + "\n")   # set up already: nothing to install
    script = ('source scripts/_env.sh; echo "sourced $?"; false; echo "after false"; echo "flags $-"; '
              'set -o | grep -E "^(errexit|nounset|pipefail) "; echo "$DVT_UNSET_VARIABLE done"')
    result = subprocess.run(["bash", "-c", script], cwd=REPO, capture_output=True, text=True,
                            env={**os.environ, "DVT_VENV": str(venv)})
    lines = result.stdout.splitlines()
    assert result.returncode == 0 and lines[:2] == ["sourced 0", "after false"], result.stdout + result.stderr
    assert "e" not in lines[2].split()[1] and "u" not in lines[2].split()[1]
    assert all(line.split()[1] == "off" for line in lines[3:6]) and lines[6] == " done"

    a_file = tmp_path / "a_file"
    a_file.write_text("")
    result = subprocess.run(["bash", "-c", 'source scripts/_env.sh; echo "returned $?"; echo still here'],
                            cwd=REPO, capture_output=True, text=True, env={**os.environ, "DVT_VENV": str(a_file / "v")})
    assert result.stdout.splitlines() == ["returned 1", "still here"], result.stdout + result.stderr
    assert "setting up" in result.stderr


def _logging_python(path, *flags):
    """A ``python`` that logs its arguments to ``path.log`` and runs this interpreter (with ``flags``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'#!/bin/sh\necho "$@" >> "{path}.log"\nexec {sys.executable} {" ".join(flags)} "$@"\n')
    path.chmod(0o755)


@pytest.mark.parametrize("has_requirements", [True, False])
def test_env_sh_never_installs_into_an_environment_it_did_not_create(tmp_path, has_requirements):
    """DVT_VENV pointing at someone's environment (no stamp of ours): used as it is when it has the
    requirements, else refused naming what it lacks; pip never runs in it."""
    python = tmp_path / "theirs" / "bin" / "python"
    _logging_python(python, *(() if has_requirements else ("-S",)))   # -S: no site-packages, no mindspore
    result = subprocess.run(["bash", "-c", 'source scripts/_env.sh; echo "returned $?"'], cwd=REPO,
                            capture_output=True, text=True, env={**os.environ, "DVT_VENV": str(python.parents[1])})
    assert "pip" not in pathlib.Path(f"{python}.log").read_text()
    assert not (python.parents[1] / ".requirements.sha256").exists()
    if has_requirements:
        assert result.stdout.strip() == "returned 0" and "as it is" in result.stderr, result.stderr
    else:
        assert result.stdout.strip() == "returned 1", result.stdout + result.stderr
        assert "lacks: mindspore mindcv" in result.stderr and "Nothing was installed" in result.stderr


def test_writers_with_strict_file_name_rules_get_a_safe_name_for_any_path(tmp_path):
    target = tmp_path / "a folder" / "naïve 名前.mindir"
    target.parent.mkdir()
    with fileio.through_safe_name(str(target)) as name:
        assert name != str(target) and name.isascii() and " " not in name and name.endswith(".mindir")
        pathlib.Path(name).write_text("graph")
    assert target.read_text() == "graph" and not os.path.exists(name)
    with pytest.raises(RuntimeError), fileio.through_safe_name(str(tmp_path / "a folder" / "ä.mindir")) as name:
        pathlib.Path(name).write_text("half")
        raise RuntimeError("the writer failed")
    assert not (tmp_path / "a folder" / "ä.mindir").exists() and not os.path.exists(name)
    plain = str(tmp_path / "plain.mindir")
    with fileio.through_safe_name(plain) as name:
        assert name == plain


# A command replaces only what it recognises as its own output (docs/outputs.md).

def _earlier_output(folder, kind):
    folder.mkdir(parents=True)
    (folder / kind.marker).write_text("written by an earlier run\n")
    return folder


@pytest.mark.parametrize("kind", [EXPORT_FOLDER, REPORT_FOLDER], ids=["export", "report"])
def test_overwrite_refuses_a_folder_holding_anything_the_command_did_not_write(tmp_path, kind):
    folder = _earlier_output(tmp_path / "out", kind)
    (folder / "paper_draft.tex").write_text("months of work")
    with pytest.raises(OutputPathError) as raised:
        check_output_dir(folder, kind, overwrite=True)
    assert str(folder) in str(raised.value) and "paper_draft.tex" in str(raised.value)
    assert f"is not {kind.what}" in str(raised.value)
    with pytest.raises(OutputPathError):
        with staged_directory(folder, kind, overwrite=True):
            pytest.fail("the replacement must be refused before it is written")
    assert (folder / "paper_draft.tex").read_text() == "months of work"


@pytest.mark.parametrize("kind", [EXPORT_FOLDER, REPORT_FOLDER], ids=["export", "report"])
def test_overwrite_refuses_a_folder_without_the_commands_marker_file(tmp_path, kind):
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(OutputPathError, match=f"is not {kind.what}"):
        check_output_dir(folder, kind, overwrite=True)


def test_overwrite_replaces_an_earlier_output_of_the_same_command_whole(tmp_path):
    folder = _earlier_output(tmp_path / "export", EXPORT_FOLDER)
    (folder / "exit7.mindir").write_bytes(b"old")
    with staged_directory(folder, EXPORT_FOLDER, overwrite=True) as staging:
        (pathlib.Path(staging) / "manifest.yaml").write_text("new\n")
        assert (folder / "exit7.mindir").exists()   # nothing is removed before the new output is complete
    assert sorted(os.listdir(folder)) == ["manifest.yaml"]
    assert (folder / "manifest.yaml").read_text() == "new\n"


def test_overwrite_never_replaces_the_working_directory(tmp_path, monkeypatch):
    folder = _earlier_output(tmp_path / "export", EXPORT_FOLDER)
    (folder / "sub").mkdir()
    for cwd in (folder, folder / "sub"):
        monkeypatch.chdir(cwd)
        with pytest.raises(OutputPathError, match="is the current folder or holds it"):
            check_output_dir(folder, EXPORT_FOLDER, overwrite=True)


@pytest.mark.parametrize("command", ["export", "eval"])
def test_out_dot_overwrite_from_a_project_folder_deletes_nothing(tmp_path, monkeypatch, capsys, command):
    project = tmp_path / "project"
    project.mkdir()
    (project / "notes.md").write_text("notes")
    (project / "data").mkdir()
    (project / "data" / "img.png").write_bytes(b"png")
    monkeypatch.chdir(project)
    config = str(REPO / "configs" / "tiny_cpu.yaml")
    if command == "export":
        from dvt_ms.export.__main__ import main
        code = main([config, "--ckpt", "missing.ckpt", "--out", ".", "--overwrite"])
    else:
        from dvt_ms.calibrate.__main__ import main
        code = main([config, "--ckpt", "missing.ckpt", "--data", str(project / "data"), "--out", ".",
                     "--overwrite"])
    assert code == 2
    error = capsys.readouterr().err
    assert "error:" in error and "current folder" in error
    assert sorted(os.listdir(project)) == ["data", "notes.md"]
    assert (project / "notes.md").read_text() == "notes"


def test_results_and_summary_replace_only_files_the_command_wrote(tmp_path):
    results, summary = tmp_path / "results.csv", tmp_path / "summary.json"
    write_results(str(results), [{"path": "a.png", "class_index": 1, "class": "cat", "confidence": 0.9, "exit": 1}])
    summary.write_text('{\n "images": 1,\n "skipped": [],\n "exit_shares": [1.0]\n}')
    check_output_file(results, kind=RESULTS_FILE)
    check_output_file(summary, kind=SUMMARY_FILE)
    write_results(str(tmp_path / "results.json"), [{"path": "a.png", "class_index": 1, "class": "cat",
                                                    "confidence": 0.9, "exit": 1}])
    check_output_file(tmp_path / "results.json", kind=RESULTS_FILE)
    image = tmp_path / "img_1.png"
    image.write_bytes(b"\x89PNG\r\n\x1a\n")
    (tmp_path / "manifest.yaml").write_text("format: 1\n")
    for path, kind in ((image, RESULTS_FILE), (tmp_path / "manifest.yaml", RESULTS_FILE), (results, SUMMARY_FILE),
                       (image, SUMMARY_FILE)):
        with pytest.raises(OutputPathError) as raised:
            check_output_file(path, kind=kind)
        assert str(path) in str(raised.value) and f"not {kind.what}" in str(raised.value)
    assert image.read_bytes() == b"\x89PNG\r\n\x1a\n"


def test_two_outputs_on_one_file_are_refused(tmp_path):
    with pytest.raises(OutputPathError, match="--out and --summary are the same file"):
        check_distinct_outputs(out=tmp_path / "r.json", summary=str(tmp_path / "." / "r.json"))
    check_distinct_outputs(out=tmp_path / "r.json", summary=None)


def test_infer_refuses_to_write_over_an_input_image_or_the_model(tmp_path, capsys):
    from dvt_ms.deploy.__main__ import main
    images = tmp_path / "images"
    images.mkdir()
    for name in ("img_0.png", "img_1.png"):
        (images / name).write_bytes(b"\x89PNG\r\n\x1a\n" + name.encode())
    model = tmp_path / "model"
    model.mkdir()
    (model / "manifest.yaml").write_text("format: 1\n")
    cases = [["--out", str(images / "img_1.png"), str(images / "img_0.png")],
             ["--out", str(model / "manifest.yaml"), str(images)],
             ["--out", str(tmp_path / "r.json"), "--summary", str(tmp_path / "r.json"), str(images)]]
    for args in cases:
        assert main(["--model", str(model), *args]) == 2
        assert "error:" in capsys.readouterr().err
    assert (images / "img_1.png").read_bytes() == b"\x89PNG\r\n\x1a\nimg_1.png"
    assert (model / "manifest.yaml").read_text() == "format: 1\n"
    assert not (tmp_path / "r.json").exists()


def test_sigterm_ends_a_command_with_143_and_ctrl_c_with_130(capsys):
    import signal
    from dvt_ms import cli

    def terminated():
        os.kill(os.getpid(), signal.SIGTERM)

    def interrupted():
        raise KeyboardInterrupt

    assert cli.run(terminated) == 143
    assert cli.run(interrupted) == 130
    assert capsys.readouterr().err.count("interrupted") == 2
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL   # the handler does not outlive the command


def test_ctrl_c_during_export_stops_it_and_leaves_nothing(tmp_path, monkeypatch, capsys):
    """MindSpore may swallow a KeyboardInterrupt raised inside its graph compilation; the export
    command defers Ctrl-C to the next exit boundary instead, so it always stops, writing nothing."""
    import signal
    import mindspore as ms
    from dvt_ms import cli
    from dvt_ms.contract.preprocessing import preprocess_record
    from dvt_ms.export import writer
    from dvt_ms.models import create_model
    model = create_model("dvt_deit_small", embed_dim=32, depth=1, num_heads=2, num_classes=4)
    preprocess = preprocess_record(224, 0.875, "bicubic", mean=[0.5] * 3, std=[0.5] * 3)
    exported = []

    def export_during_which_ctrl_c_arrives(net, *inputs, file_name, file_format):
        os.kill(os.getpid(), signal.SIGINT)
        exported.append(file_name)

    monkeypatch.setattr(ms, "export", export_during_which_ctrl_c_arrives)
    out = tmp_path / "export"
    started_with = signal.signal(signal.SIGINT, signal.default_int_handler)   # as in a terminal, whoever runs pytest
    try:
        assert cli.run(lambda: writer.export_model(model, out, "dvt_deit_small", preprocess),
                       defer_interrupts=True) == 130
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler   # restored after the command
    finally:
        signal.signal(signal.SIGINT, started_with)
    assert len(exported) == 1 and not out.exists() and os.listdir(tmp_path) == []


def test_convert_replaces_only_a_checkpoint_it_converted_before(tmp_path, golden_dir):
    from dvt_ms.convert import convert_checkpoint, published_results_path
    from helpers import GOLDEN_MODELS, golden_overrides
    overrides = golden_overrides(golden_dir, "deit")
    trained = tmp_path / "best.ckpt"
    trained.write_bytes(b"a trained checkpoint")
    with pytest.raises(OutputPathError, match="best.ckpt exists and is not a checkpoint the converter wrote"):
        convert_checkpoint(golden_dir / "deit.pth.tar", trained, GOLDEN_MODELS["deit"], overrides)
    assert trained.read_bytes() == b"a trained checkpoint"
    converted = tmp_path / "converted.ckpt"
    convert_checkpoint(golden_dir / "deit.pth.tar", converted, GOLDEN_MODELS["deit"], overrides)
    first = pathlib.Path(published_results_path(converted)).read_text()
    convert_checkpoint(golden_dir / "deit.pth.tar", converted, GOLDEN_MODELS["deit"], overrides)   # its own: replaced
    assert pathlib.Path(published_results_path(converted)).read_text() == first
