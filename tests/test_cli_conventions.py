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


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_version_names_the_package_version(command, capsys):
    import dvt_ms
    with pytest.raises(SystemExit) as exited:
        _main(command)(["--version"])
    assert exited.value.code == 0
    assert f"dvt-ms {dvt_ms.__version__}" in capsys.readouterr().out


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_is_plain_text_shown_once(command, capsys):
    for subcommand in COMMANDS[command][1]:
        with pytest.raises(SystemExit):
            _main(command)(subcommand + ["--help"])
        text = capsys.readouterr().out
        assert "``" not in text and "Command line" not in text, text
        paragraphs = [p.strip() for p in text.split("\n\n") if p.strip()]
        assert len(paragraphs) == len(set(paragraphs)), f"a paragraph of {command}'s help is shown twice:\n{text}"


@pytest.mark.parametrize("how, expected", [
    ({"DVT_PROG": "scripts/run_export.sh"}, "usage: scripts/run_export.sh "),   # what scripts/run_*.sh set
    ({"argv0": "/venv/bin/dvt-export"}, "usage: dvt-export "),                   # the console script
    ({}, "usage: python -m dvt_ms.export "),
])
def test_the_usage_line_names_the_command_the_user_typed(how, expected, monkeypatch, capsys):
    monkeypatch.delenv("DVT_PROG", raising=False)
    if "DVT_PROG" in how:
        monkeypatch.setenv("DVT_PROG", how["DVT_PROG"])
    monkeypatch.setattr("sys.argv", [how.get("argv0", "/x/dvt_ms/export/__main__.py")])
    with pytest.raises(SystemExit):
        _main("export")(["--help"])
    assert capsys.readouterr().out.startswith(expected)


def test_the_shell_scripts_name_themselves_in_the_usage_line():
    import pathlib
    scripts = pathlib.Path(__file__).resolve().parents[1] / "scripts"
    for name in ("run_eval.sh", "run_export.sh", "run_infer.sh", "run_train.sh"):
        text = (scripts / name).read_text()
        assert 'DVT_PROG="$0" exec python -m dvt_ms.' in text, name


def test_help_shows_each_options_default(capsys):
    with pytest.raises(SystemExit):
        _main("export")(["--help"])
    assert "(default: float32)" in " ".join(capsys.readouterr().out.split())


def test_every_option_of_every_command_and_benchmark_uses_the_underscore_spelling():
    """All option strings given to ``add_argument`` anywhere in the package, benchmarks and scripts."""
    import ast
    import pathlib
    root = pathlib.Path(__file__).resolve().parents[1]
    hyphenated = []
    for path in sorted([*(root / "dvt_ms").rglob("*.py"), *(root / "benchmarks").glob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument":
                hyphenated += [f"{path.name}: {arg.value}" for arg in node.args if isinstance(arg, ast.Constant)
                               and isinstance(arg.value, str) and arg.value.startswith("--") and "-" in arg.value[2:]]
    assert not hyphenated, hyphenated
