"""The repository installs as a package, and what the README and scripts call exists."""
import importlib.util
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


def _requirement_lines():
    lines = (REPO / "requirements.txt").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def test_pyproject_declares_the_requirements_the_scripts_install():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    test_only = ("pytest", "pytest-xdist")
    assert sorted(project["dependencies"]) == sorted(r for r in _requirement_lines() if r not in test_only)
    assert project["optional-dependencies"]["test"] == list(test_only)


def test_console_scripts_point_at_real_entry_points():
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    for name, target in scripts.items():
        module, function = target.split(":")
        assert importlib.util.find_spec(module) is not None, name
        assert f"def {function}(" in pathlib.Path(importlib.util.find_spec(module).origin).read_text(), name


def _commands_in(text):
    return set(re.findall(r"python -m (dvt_ms[\w.]*)", text))


def test_every_python_m_command_in_readme_docs_and_scripts_exists():
    texts = [(REPO / "README.md").read_text()] + [p.read_text() for p in (REPO / "docs").glob("*.md")]
    texts += [p.read_text() for p in (REPO / "scripts").glob("*.sh")] + [p.read_text() for p in (REPO / "configs").glob("*.yaml")]
    commands = set().union(*map(_commands_in, texts))
    assert "dvt_ms.train" in commands and "dvt_ms.convert" in commands
    for command in sorted(commands):
        spec = importlib.util.find_spec(command)
        assert spec is not None, f"python -m {command}: no such module"
        if spec.submodule_search_locations:   # a package runs its __main__
            assert importlib.util.find_spec(command + ".__main__") is not None, f"python -m {command}: no __main__"


def test_the_readme_names_every_doc_and_every_benchmark():
    readme = (REPO / "README.md").read_text()
    pages = sorted(f"docs/{p.name}" for p in (REPO / "docs").glob("*.md"))
    scripts = sorted(f"benchmarks/{p.name}" for p in (REPO / "benchmarks").glob("*.py"))
    missing = [name for name in pages + scripts if name not in readme]
    assert not missing, f"README.md does not name {missing}"


@pytest.mark.slow
def test_the_wheel_holds_every_module(tmp_path):
    """pip builds a wheel of dvt_ms with every subpackage (no module left out by the package list)."""
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(REPO / name, source / name)
    for folder in ("dvt_ms", "configs"):
        shutil.copytree(REPO / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                             "-w", str(tmp_path / "wheel"), str(source)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    wheel, = (tmp_path / "wheel").glob("dvt_ms-*.whl")
    packaged = {name for name in zipfile.ZipFile(wheel).namelist() if name.endswith(".py")}
    expected = {str(p.relative_to(REPO)) for p in (REPO / "dvt_ms").rglob("*.py")}
    assert packaged == expected
    configs = {name for name in zipfile.ZipFile(wheel).namelist() if name.startswith("dvt_ms/configs/")}
    assert configs == {f"dvt_ms/configs/{p.name}" for p in (REPO / "configs").glob("*.yaml")}

    # Installed (unpacked) and run from another folder, the README's config names resolve to the package's.
    installed, elsewhere = tmp_path / "site", tmp_path / "elsewhere"
    zipfile.ZipFile(wheel).extractall(installed)
    elsewhere.mkdir()
    found = subprocess.run([sys.executable, "-c", "from dvt_ms.shipped_configs import config_path; "
                            "print(config_path('configs/tiny_cpu.yaml'))"], cwd=elsewhere, capture_output=True,
                           text=True, env={"PYTHONPATH": str(installed), "PATH": "/usr/bin:/bin"}, timeout=60)
    assert found.stdout.strip() == str(installed / "dvt_ms" / "configs" / "tiny_cpu.yaml"), found.stderr


def test_the_readmes_config_names_work_from_any_folder(tmp_path, monkeypatch):
    """``configs/tiny_cpu.yaml`` names the shipped config when the current folder has none; a file
    on disk of that name wins."""
    from dvt_ms.config import load_config
    monkeypatch.chdir(tmp_path)
    config = load_config("configs/tiny_cpu.yaml", {"data_dir": "d"})
    assert config.model == load_config(REPO / "configs" / "tiny_cpu.yaml", {"data_dir": "d"}).model
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "tiny_cpu.yaml").write_text("model: dvt_deit_small\ndata_dir: mine\n")
    assert load_config("configs/tiny_cpu.yaml").data_dir == "mine"


def test_build_outputs_are_ignored_by_git():
    ignored = (REPO / ".gitignore").read_text().split()
    assert "build/" in ignored and "*.egg-info/" in ignored


def test_the_readmes_python_snippet_exits_without_teardown_tracebacks(tmp_path):
    """A model held at module level outlives MindSpore's module globals at exit; Cell.__del__ must
    not print "Exception ignored" once per cell (dvt_ms/__init__.py)."""
    snippet = re.search(r"```python\n(.*?)```", (REPO / "README.md").read_text(), re.S).group(1)
    runnable = "\n".join(line for line in snippet.splitlines() if "images" not in line)   # no input data here
    assert "create_model" in runnable and "set_train" in runnable
    result = subprocess.run([sys.executable, "-c", runnable], cwd=tmp_path, capture_output=True, text=True,
                            timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Exception ignored" not in result.stderr and "Traceback" not in result.stderr, result.stderr[-3000:]
