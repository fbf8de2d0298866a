"""The package tree follows the data flow, and imports run one way (docs/architecture.md).

Each subpackage may import only the parts listed for it here; this table is the rule itself.
"""
import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "dvt_ms"
FOUNDATION = {"errors", "cli", "fileio", "imagefolder", "imagedecode", "shipped_configs", "plots", "device"}
# part -> the parts (besides itself and the foundation) it may import
ALLOWED = {
    "models": set(),
    "config": {"models"},
    "convert": {"models"},
    "data": set(),
    "checkpoint": set(),
    # what a training run recorded (its config.yaml), read by the commands that use its checkpoints
    "runrecord": {"config", "models"},
    "train": {"models", "config", "data", "checkpoint", "runrecord"},
    "calibrate": {"models", "config", "data", "checkpoint", "runrecord"},
    "export": {"models", "config", "checkpoint", "deploy", "runrecord"},
    # the exit rule (numpy only) is shared with calibration; nothing else of training, data or mindcv
    "deploy": {"calibrate.search"},
    "demo": set(),
}
DATA_FLOW = ["models", "convert", "train", "calibrate", "export", "deploy"]


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


def test_every_module_belongs_to_a_known_part():
    unknown = {module for module, _ in _modules() if _part(module) not in set(ALLOWED) | FOUNDATION | {"dvt_ms"}}
    assert not unknown, f"modules outside the documented layout: {sorted(unknown)}"


@pytest.mark.parametrize("part", sorted(ALLOWED))
def test_part_imports_only_what_comes_before_it_in_the_data_flow(part):
    allowed = ALLOWED[part] | FOUNDATION | {part}
    violations = []
    for module, path in _modules():
        if _part(module) != part:
            continue
        for target in _imports(module, path):
            name = target.split(".", 1)[1] if "." in target else target
            if not any(name == a or name.startswith(a + ".") for a in allowed):
                violations.append(f"{module} imports {target}")
    assert not violations, "\n".join(violations)


def test_foundation_imports_no_subpackage():
    violations = [f"{module} imports {target}" for module, path in _modules() if _part(module) in FOUNDATION
                  for target in _imports(module, path) if _part(target) not in FOUNDATION]
    assert not violations, "\n".join(violations)


def test_model_and_deployment_import_nothing_of_training():
    for module, path in _modules():
        if _part(module) in ("models", "deploy"):
            assert not {t for t in _imports(module, path) if _part(t) == "train"}, module


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


def test_the_data_flow_is_the_package_tree():
    """Each stage of the data flow is a subpackage, and none imports a later one."""
    for index, part in enumerate(DATA_FLOW):
        assert (PACKAGE / part / "__init__.py").is_file(), part
        later = set(DATA_FLOW[index + 1:]) - ({"deploy"} if part == "export" else set())
        assert not ALLOWED[part] & later, (part, ALLOWED[part] & later)
