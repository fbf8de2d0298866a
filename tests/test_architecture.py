"""The package is built in layers along the data flow, and every import points down (docs/architecture.md).

The rule is the order of ``LAYERS`` alone: a module may import modules of its own layer or of a
lower one, never of a higher one. Deployment sits low (it needs no model, training, calibration or
export code); calibrate and export, which write what deployment reads, sit above it.
"""
import ast
import pathlib
import sys

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "dvt_ms"
CONTRACT = "contract"   # the calibrate/export/deploy contract: exit rule, preprocessing, manifest and thresholds
LAYERS = [   # lowest first; a part is a subpackage or a top-level module ("dvt_ms" is the package's __init__)
    {"dvt_ms", "errors", "schema", "fileio", "cli", "imagefolder", "imagedecode", "shipped_configs", "plots",
     "device"},
    {CONTRACT},
    {"deploy"},
    {"models", "data", "checkpoint"},
    {"config", "convert", "runrecord"},   # runrecord: what a training run recorded, read by later commands
    {"train"},
    {"calibrate"},
    {"export"},
    {"demo", "devicecheck"},   # tools over the whole flow (the device self-check); nothing imports them
]
LAYER = {part: floor for floor, parts in enumerate(LAYERS) for part in parts}
# What deployment may never need, not even through another module.
NOT_FOR_DEPLOYMENT = {"models", "data", "checkpoint", "config", "convert", "runrecord", "train", "calibrate",
                      "export", "demo"}


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        yield ".".join(parts[:-1] if parts[-1] == "__init__" else parts), path


def _imports(module, path):
    """Every dvt_ms module ``module`` imports, at any depth of its code (function-level too)."""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("dvt_ms"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("dvt_ms"):
                submodules = {f"{target}.{alias.name}" for alias in node.names}
                found.update(name for name in submodules if _resolves(name))
                if not all(_resolves(name) for name in submodules):   # names defined in ``target``
                    found.add(target)
    return {name for name in found if _resolves(name)}


def _resolves(name):
    relative = pathlib.Path(*name.split(".")[1:])
    return (PACKAGE / relative).with_suffix(".py").is_file() or (PACKAGE / relative / "__init__.py").is_file()


def _part(module):
    """The part of the package a module belongs to: a subpackage, a foundation module, or the
    package itself ("dvt_ms", whose names load the model lazily)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "dvt_ms"


def test_every_module_belongs_to_a_layer():
    unknown = {module for module, _ in _modules() if _part(module) not in LAYER}
    assert not unknown, f"modules in no layer (add them to LAYERS): {sorted(unknown)}"


def _upward_imports(part):
    return [f"{module} (layer {LAYER[part]}) imports {target} (layer {LAYER[_part(target)]})"
            for module, path in _modules() if _part(module) == part
            for target in _imports(module, path) if LAYER[_part(target)] > LAYER[part]]


@pytest.mark.parametrize("part", sorted(LAYER))
def test_every_import_points_to_the_same_or_a_lower_layer(part):
    violations = _upward_imports(part)
    assert not violations, "\n".join(violations)


def _closure(modules):
    graph = {module: _imports(module, path) for module, path in _modules()}
    seen, todo = set(), list(modules)
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo.extend(graph.get(module, ()))
    return seen


def test_deployment_needs_nothing_of_the_model_training_calibration_or_export():
    deployment = [module for module, _ in _modules() if _part(module) in ("deploy", CONTRACT)]
    needed = {_part(module) for module in _closure(deployment)}
    assert not needed & NOT_FOR_DEPLOYMENT, sorted(needed & NOT_FOR_DEPLOYMENT)


def test_the_model_needs_nothing_of_training_calibration_export_or_deployment():
    models = [module for module, _ in _modules() if _part(module) == "models"]
    needed = {_part(module) for module in _closure(models)}
    assert not needed & {"train", "calibrate", "export", "deploy", CONTRACT, "config", "data"}, needed


def test_nothing_imports_the_device_check():
    importers = [module for module, path in _modules() if _part(module) != "devicecheck"
                 and any(_part(target) == "devicecheck" for target in _imports(module, path))]
    assert not importers, importers


def test_no_import_cycles():
    graph = {module: {t for t in _imports(module, path) if t != module} for module, path in _modules()}
    state = {}

    def visit(module, trail):
        if state.get(module) == "done":
            return
        assert state.get(module) != "open", "import cycle: " + " -> ".join(trail + [module])
        state[module] = "open"
        for target in graph.get(module, ()):
            visit(target, trail + [module])
        state[module] = "done"

    for module in graph:
        visit(module, [])


def test_the_rule_catches_an_upward_import(tmp_path, monkeypatch):
    """The checker itself: a model module importing the trainer is reported."""
    fake = tmp_path / "dvt_ms"
    for part in ("models", "train"):
        (fake / part).mkdir(parents=True)
        (fake / part / "__init__.py").write_text("")
    (fake / "__init__.py").write_text("")
    (fake / "train" / "trainer.py").write_text("X = 1\n")
    (fake / "models" / "cascade.py").write_text("from ..train.trainer import X\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    assert _upward_imports("models") == ["dvt_ms.models.cascade (layer 3) imports dvt_ms.train.trainer (layer 5)"]
