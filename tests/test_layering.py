"""The package layering of issue 15, checked on the source: imports only point down, no cycles,
small modules, no `__class__` surgery, and `import model` stays free of the GPU and training code."""

from __future__ import annotations

import ast
import graphlib
import json
import subprocess
import sys
from pathlib import Path

from helpers import REPO

PACKAGES = ("model", "export", "service")
MAX_LINES = 400


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for pkg in PACKAGES for p in sorted((REPO / pkg).rglob("*.py"))}


def layer(module: str) -> str:
    """model core, model.pipeline/accel/training, export.engines, export, service."""
    parts = module.split(".")
    if parts[0] == "model":
        is_subpackage = len(parts) > 1 and (REPO / "model" / parts[1]).is_dir()
        return f"model.{parts[1]}" if is_subpackage else "model core"
    if parts[0] == "export" and len(parts) > 1 and parts[1] == "engines":
        return "export.engines"
    return parts[0]


ALLOWED = {
    "model core": {"model core"},
    "model.pipeline": {"model core", "model.pipeline"},
    "model.accel": {"model core", "model.pipeline", "model.accel"},
    "model.training": {"model core", "model.pipeline", "model.training"},
    "export.engines": {"model core", "model.pipeline", "model.accel", "model.training", "export.engines"},
    "export": {"model core", "model.pipeline", "model.accel", "model.training", "export.engines", "export"},
    "service": {"model core", "model.pipeline", "model.accel", "model.training", "export.engines", "service"},
}


def _product_target(name: str) -> str | None:
    """The deepest product module that `name` (a module, or a name inside one) refers to."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in MODULES:
            return ".".join(parts[:end])
    return None


def imports_of(module: str) -> set[str]:
    """Product modules `module` imports anywhere in its source (lazy imports count too)."""
    path = MODULES[module]
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[: len(package) - node.level + 1]) if node.level else ""
            source = ".".join(p for p in (base, node.module) if p)
            names += [f"{source}.{alias.name}" for alias in node.names]  # a submodule, or a name in `source`
    return {target for name in names if (target := _product_target(name)) and target != module}


GRAPH = {module: imports_of(module) for module in MODULES}


def test_the_graph_sees_the_known_imports():
    """Guards the parser itself: relative, absolute and `from . import` forms all resolve."""
    assert len(MODULES) > 60
    assert {"model.configs", "model.network", "model.safe_load", "model.download"} <= GRAPH["model.checkpoint"]
    assert "model.pipeline.inference" in GRAPH["model.pipeline"]
    assert "model.checkpoint" in GRAPH["model"]
    assert any(target.startswith("export.engines.") for target in GRAPH["service.backends.onnxruntime"])


def violations(graph: dict[str, set[str]]) -> list[str]:
    return [
        f"{module} ({layer(module)}) imports {target} ({layer(target)})"
        for module, targets in graph.items()
        for target in sorted(targets)
        if layer(target) not in ALLOWED[layer(module)]
    ]


def cycle(graph: dict[str, set[str]]) -> list[str]:
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as err:
        return err.args[1]
    return []


def test_the_checks_catch_upward_imports_and_cycles():
    upward = {
        "model.checkpoint": {"model.pipeline.decode"},
        "model.accel.fast": {"model.training.init"},
        "export.engines.profile": {"export.onnx_export"},
        "service.api": {"export.build_engine"},
        "model.pipeline.render": {"service.errors"},
    }
    assert len(violations(upward)) == len(upward)
    assert cycle({"service.a": {"service.b"}, "service.b": {"service.a"}})


def test_imports_only_point_down():
    found = violations(GRAPH)
    assert not found, "\n".join(found)


def test_no_import_cycles():
    found = cycle(GRAPH)
    assert not found, "import cycle: " + " -> ".join(found)


def test_importing_model_loads_no_subpackage_triton_service_or_export():
    code = "import json, sys; import model; from model import load_model; print(json.dumps(sorted(sys.modules)))"
    loaded = json.loads(subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout)
    assert "model.checkpoint" in loaded  # the probe itself worked
    forbidden = ("triton", "model.accel", "model.training", "model.pipeline", "service", "export")
    offenders = [m for m in loaded if any(m == f or m.startswith(f + ".") for f in forbidden)]
    assert not offenders, offenders


def test_no_product_module_over_400_lines():
    long = {module: n for module, path in MODULES.items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def _assigns_class(node: ast.AST) -> bool:
    targets = {ast.Assign: lambda n: n.targets, ast.AugAssign: lambda n: [n.target], ast.AnnAssign: lambda n: [n.target]}
    if type(node) in targets:
        return any(isinstance(t, ast.Attribute) and t.attr == "__class__" for t in targets[type(node)](node))
    is_setattr = isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) in ("setattr", "__setattr__")
    return is_setattr and any(isinstance(a, ast.Constant) and a.value == "__class__" for a in node.args)


def test_no_class_assignment_in_product_code():
    found = [
        f"{MODULES[module].relative_to(REPO)}:{node.lineno}"
        for module in MODULES
        for node in ast.walk(ast.parse(MODULES[module].read_text()))
        if _assigns_class(node)
    ]
    assert not found, f"__class__ assigned at {found}"


def test_class_assignment_detector_sees_each_form():
    forms = ["x.__class__ = C", "setattr(x, '__class__', C)", "object.__setattr__(x, '__class__', C)"]
    assert all(any(_assigns_class(n) for n in ast.walk(ast.parse(src))) for src in forms)
    assert not any(_assigns_class(n) for n in ast.walk(ast.parse("y = x.__class__\nsetattr(x, 'a', 1)")))
