"""Every command line follows one convention (dvt_ms/cli.py): options in mindcv's underscore
spelling, and a user error ends the command with exit code 2 and one line ``error: ...`` on stderr
naming the file, key or value (no traceback)."""
import importlib
import re

import pytest

# command -> (module whose main(argv) it runs, the sub-commands' --help to read too)
COMMANDS = {
    "train": ("dvt_ms.train.__main__", [[]]),
    "convert": ("dvt_ms.convert.__main__", [[]]),
    "flops": ("dvt_ms.models.flops", [[]]),
    "eval": ("dvt_ms.calibrate.__main__", [[]]),
    "export": ("dvt_ms.export.__main__", [[]]),
    "infer": ("dvt_ms.deploy.__main__", [[]]),
    "demo": ("dvt_ms.demo.summary", [[], ["budgets"], ["summarize"]]),
    "demo dataset": ("dvt_ms.demo.dataset", [[]]),
}


def _user_errors(tmp):
    """command -> (arguments with one user error, what the message must name)."""
    return {
        "train": ([str(tmp / "missing.yaml")], f"cannot read config {tmp / 'missing.yaml'}"),
        "convert": ([str(tmp / "missing.pth.tar"), str(tmp / "out.ckpt"), "--model", "dvt_t2t_vit_12"],
                    str(tmp / "missing.pth.tar")),
        "flops": (["--model", "dvt_deit_small", "embed_dim=banana"], "embed_dim"),
        "eval": ([str(tmp / "missing.yaml"), "--ckpt", str(tmp / "x.ckpt")],
                 f"cannot read config {tmp / 'missing.yaml'}"),
        "export": ([str(tmp / "missing.yaml"), "--ckpt", str(tmp / "x.ckpt"), "--out", str(tmp / "out")],
                   f"cannot read config {tmp / 'missing.yaml'}"),
        "infer": (["--model", str(tmp / "nowhere"), str(tmp)], f"{tmp / 'nowhere'}: no manifest.yaml"),
        "demo": (["summarize", "--eval", str(tmp), "--infer", "0.5:results.json", "--out", str(tmp / "out")],
                 "--infer '0.5:results.json'"),
        "demo dataset": ([str(tmp / "data"), "--num_classes", "0"], "num_classes"),
    }


def _main(command):
    return importlib.import_module(COMMANDS[command][0]).main


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_options_use_the_underscore_spelling(command, capsys):
    for subcommand in COMMANDS[command][1]:
        with pytest.raises(SystemExit) as exited:
            _main(command)(subcommand + ["--help"])
        assert exited.value.code == 0
        text = capsys.readouterr().out
        options = set(re.findall(r"(?<![\w-])--[\w-]+", text))
        assert "--help" in options
        assert not [option for option in options if "-" in option[2:]], (command, subcommand, sorted(options))


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_user_error_is_one_line_with_exit_code_2(command, tmp_path, capsys):
    argv, named = _user_errors(tmp_path)[command]
    assert _main(command)(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert named in err, err
