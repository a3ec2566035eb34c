"""The package's structure: no import cycles, the method knows nothing outside itself, layers as docs/architecture.md says.

Every ``import`` statement of ``src/mckd`` is read from the source (at module
level and inside functions alike), so an import hidden in a function to break
a cycle is still a cycle here. A module that loads modules by name
(``importlib.import_module``: the registry of built-in components, the
``mckd prepare`` commands) imports every mckd module it names in a string.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "mckd"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports_of(name: str) -> set[str]:
    """The mckd modules that module ``name`` imports (``from mckd import x`` is module ``mckd.x`` when it is one)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("mckd")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against the package
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            if not base.startswith("mckd"):
                continue
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base)
    if "import_module(" in path.read_text():  # dynamic loads: every module named in a string
        found |= {node.value for node in ast.walk(ast.parse(path.read_text()))
                  if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in MODULES}
    return {m for m in found if m in MODULES and m != name}


GRAPH = {name: imports_of(name) for name in MODULES}


def find_cycle() -> list[str]:
    """One import cycle (as a path of module names), or [] when there is none."""
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        stack.append(node)
        for other in sorted(GRAPH[node]):
            if state.get(other) == 1:
                return stack[stack.index(other):] + [other]
            if other not in state:
                cycle = visit(other)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return []

    for node in sorted(GRAPH):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return []


def test_the_walk_follows_the_registry_s_dynamic_imports():
    assert {"mckd.seg.dataset", "mckd.nets.unet3d", "mckd.tasks.segmentation", "mckd.method"} <= GRAPH["mckd.components"]


def test_no_module_imports_one_that_imports_it_back():
    assert find_cycle() == [], " -> ".join(find_cycle())


def test_the_method_imports_nothing_outside_itself_but_the_errors():
    for name, imported in GRAPH.items():
        if name == "mckd.method" or name.startswith("mckd.method."):
            outside = {m for m in imported if not (m == "mckd.method" or m.startswith("mckd.method.")) and m != "mckd.errors"}
            assert outside == set(), f"{name} imports {sorted(outside)}"


@functools.cache
def _call_walk():
    """benchmarks/call_walk.py, whose parser of the layers block this test shares."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("call_walk", ROOT / "benchmarks" / "call_walk.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def readme_layers() -> list[list[str]]:
    """The layers of the architecture block of docs/architecture.md, lowest first: each a list of module prefixes."""
    return _call_walk().readme_layers(ROOT / "docs" / "architecture.md")


def layer_of(module: str, layers: list[list[str]]) -> int:
    level = _call_walk().layer_of(module, layers)
    if level is None:
        raise AssertionError(f"{module} is in no layer of docs/architecture.md")
    return level


def test_every_import_goes_to_the_same_or_a_lower_layer_of_the_readme():
    layers = readme_layers()
    upward = []
    for name, imported in GRAPH.items():
        if name == "mckd":
            continue
        for other in imported:
            if other != "mckd" and layer_of(other, layers) > layer_of(name, layers):
                upward.append(f"{name} (layer {layer_of(name, layers)}) imports {other} (layer {layer_of(other, layers)})")
    assert upward == [], "\n".join(sorted(upward))
