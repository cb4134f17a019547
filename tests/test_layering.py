"""The server's subpackages import only downward, and no module import cycle exists.

The allowed edges are the ones each subpackage's docstring states; a new upward import or a
cycle fails here with the offending modules named.
"""

from __future__ import annotations

import ast
from pathlib import Path

import tpserve

# Which other subpackages of tpserve each subpackage may import (directly, anywhere in a module).
ALLOWED: dict[str, set[str]] = {
    "core": set(),
    "distributed": {"core"},
    "kvcache": {"core"},
    "layers": {"core", "distributed"},
    "attention": {"core", "kvcache"},
    "models": {"core", "distributed", "kvcache", "layers", "attention"},
    "engine": {"core", "distributed", "kvcache", "layers", "attention", "models"},
    "testing": {"core", "distributed", "kvcache", "layers", "attention", "models", "engine"},
    "entrypoints": {"core", "distributed", "kvcache", "layers", "attention", "models", "engine", "testing"},
}
TOP_LEVEL = {"__init__", "__main__"}  # the package's public face may import any layer


def module_name(package_dir: Path, path: Path) -> str:
    parts = list(path.relative_to(package_dir.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(package_dir: Path, path: Path) -> set[str]:
    """Every tpserve module `path` imports, resolved to absolute names (lazy imports included)."""
    root = package_dir.name
    this = module_name(package_dir, path)
    package = this if path.name == "__init__.py" else this.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == root)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != root:
                continue
            # `from pkg import name` may name a submodule: count it as that module.
            for alias in node.names:
                candidate = f"{target}.{alias.name}"
                found.add(candidate if _is_module(package_dir, candidate) else target)
    return found


def _is_module(package_dir: Path, name: str) -> bool:
    relative = Path(*name.split(".")[1:])
    return (package_dir / relative).with_suffix(".py").is_file() or (package_dir / relative / "__init__.py").is_file()


def layer_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def import_graph(package_dir: Path) -> dict[str, set[str]]:
    return {
        module_name(package_dir, path): imported_modules(package_dir, path)
        for path in sorted(package_dir.rglob("*.py"))
        if "__pycache__" not in path.parts
    }


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    problems = []
    for module, targets in graph.items():
        source = layer_of(module)
        if source in TOP_LEVEL:
            continue
        for target in sorted(targets):
            destination = layer_of(target)
            if destination == source:
                continue
            allowed = ALLOWED.get(source, set())
            if destination not in allowed:
                problems.append(f"{module} imports {target}: {source} may import only {sorted(allowed)}")
    return problems


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every cycle found by a depth-first walk, each as the modules along it."""
    cycles: list[list[str]] = []
    state: dict[str, str] = {}  # "open" while on the current path, "done" once explored
    path: list[str] = []

    def visit(module: str) -> None:
        state[module] = "open"
        path.append(module)
        for target in sorted(graph.get(module, set())):
            if state.get(target) == "open":
                cycles.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target)
        path.pop()
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module)
    return cycles


PACKAGE_DIR = Path(tpserve.__file__).parent


def test_every_subpackage_has_a_layer_and_a_docstring() -> None:
    subpackages = {p.parent.name for p in PACKAGE_DIR.glob("*/__init__.py")}
    assert subpackages == set(ALLOWED), "a new subpackage needs its place in ALLOWED"
    for name in subpackages:
        docstring = ast.get_docstring(ast.parse((PACKAGE_DIR / name / "__init__.py").read_text()))
        assert docstring, f"tpserve.{name} has no docstring saying what the layer is and may import"


def test_server_imports_only_go_down_the_layers() -> None:
    assert upward_imports(import_graph(PACKAGE_DIR)) == []


def test_server_has_no_import_cycle() -> None:
    assert import_cycles(import_graph(PACKAGE_DIR)) == []


def test_the_checks_catch_an_upward_import_and_a_cycle(tmp_path: Path) -> None:
    package = tmp_path / "tpserve"
    for sub in ("core", "engine", "models"):
        (package / sub).mkdir(parents=True)
        (package / sub / "__init__.py").write_text('"""layer"""\n')
    (package / "__init__.py").write_text("")
    (package / "core" / "errors.py").write_text("from ..engine.llm import LLM\n")  # upward
    (package / "engine" / "llm.py").write_text("from ..core import errors\nfrom .runner import Runner\n")
    (package / "engine" / "runner.py").write_text("from tpserve.engine import llm\n")  # cycle llm <-> runner
    graph = import_graph(package)
    assert upward_imports(graph) == ["tpserve.core.errors imports tpserve.engine.llm: core may import only []"]
    cycles = import_cycles(graph)
    assert ["tpserve.engine.llm", "tpserve.engine.runner", "tpserve.engine.llm"] in cycles
