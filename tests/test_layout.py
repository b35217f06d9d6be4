"""The house's layout, read from the source with `ast`: imports run one way and never in a circle.

Floors, lowest first (a module may import its own floor or a lower one, never a higher one):
  0  onnxcomp.errors, onnxcomp.report, onnxcomp.progress, onnxcomp._testhooks
  1  onnxcomp.graph.*      2  onnxcomp.measure.*      3  onnxcomp.pipeline.*
  4  onnxcomp.passes.*  (source in passes/; a wing - qdq, prune, sparsify - never imports another wing)
  5  features: onnxcomp.checks.*, onnxcomp.distill.*, onnxcomp.optimize, onnxcomp.inspect_model, onnxcomp.cli.*
  the package face (onnxcomp/__init__.py, onnxcomp/__main__.py) may import anything.
Also: no `from x import _private` across modules, and torch only inside onnxcomp/distill.
Every import statement counts, including those inside functions (a lazy import hides a circle at
run time, not in the design). The registry loads onnxcomp.passes with importlib by name: that is
not an import statement, so it is not an edge, by design.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

from conftest import REPO

FACE = {"onnxcomp", "onnxcomp.__main__"}      # the package face: above every floor
WINGS = ("onnxcomp.passes.qdq", "onnxcomp.passes.prune", "onnxcomp.passes.sparsify", "onnxcomp.passes.precision")
FLOORS = [  # (module or package prefix, floor)
    ("onnxcomp.errors", 0), ("onnxcomp.report", 0), ("onnxcomp.progress", 0), ("onnxcomp._testhooks", 0),
    ("onnxcomp.graph", 1), ("onnxcomp.measure", 2), ("onnxcomp.pipeline", 3), ("onnxcomp.passes", 4),
    ("onnxcomp.checks", 5), ("onnxcomp.distill", 5), ("onnxcomp.optimize", 5), ("onnxcomp.inspect_model", 5),
    ("onnxcomp.compress", 5),
    ("onnxcomp.cli", 5),
]
TORCH = ("torch", "torchvision")
TORCH_HOME = "onnxcomp.distill"


@dataclass(frozen=True)
class Import:
    target: str        # the imported module (the deepest name that is a module of the package)
    names: tuple       # names taken with `from target import ...` (empty for `import target`)
    line: int


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def module_files(roots: dict[str, Path]) -> dict[str, Path]:
    """{dotted module name: file} for every .py under each root, keyed by the root's import name."""
    modules = {}
    for package, root in roots.items():
        root = root.resolve()
        for path in sorted(root.rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join([package, *parts])] = path
    return modules


def _resolve(module: str, path: Path, node: ast.ImportFrom) -> str:
    """The absolute module a `from ... import` names, relative levels resolved against `module`."""
    if not node.level:
        return node.module or ""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> list[Import]:
    """Every import in the file (module level or inside functions), external ones included."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [Import(alias.name, (), node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, path, node)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                if sub in modules:                      # `from pkg import submodule`
                    found.append(Import(sub, (), node.lineno))
                else:
                    found.append(Import(base, (alias.name,), node.lineno))
    return found


def floor_of(module: str) -> int | None:
    if module in FACE:
        return len(FLOORS)
    for prefix, floor in FLOORS:
        if _within(module, prefix):
            return floor
    return None


def wing_of(module: str) -> str | None:
    return next((w for w in WINGS if _within(module, w)), None)


def find_cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """One concrete cycle (a -> b -> ... -> a) per strongly connected component that has one."""
    index, low, stack, on_stack, components = {}, {}, [], set(), []

    def connect(v):  # Tarjan's algorithm, recursive (the graph has about a hundred nodes)
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            components.append(set(component))

    for v in sorted(edges):
        if v not in index:
            connect(v)
    cycles = []
    for component in components:
        start = min(component)
        if len(component) == 1 and start not in edges.get(start, ()):
            continue
        cycles.append(_path_back(start, component, edges))
    return sorted(cycles)


def _path_back(start: str, component: set[str], edges: dict[str, set[str]]) -> list[str]:
    """A shortest path start -> ... -> start inside one component (breadth first)."""
    parent, frontier = {}, [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(edges.get(v, ())):
                if w not in component:
                    continue
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(parent[path[-1]])
                    return [start, *reversed(path[:-1]), start]
                if w not in parent:
                    parent[w] = v
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"no cycle through {start}")


def layout_findings(roots: dict[str, Path]) -> list[str]:
    """Every breach of the layout rules in the package(s) under `roots`, one line each."""
    modules = module_files(roots)
    findings, edges = [], {m: set() for m in modules}
    findings += [f"floor: {m} belongs to no floor; add it to FLOORS in tests/test_layout.py"
                 for m in modules if floor_of(m) is None]
    for module, path in modules.items():
        where = next(path.relative_to(r.resolve().parent) for r in roots.values() if r.resolve() in path.parents)
        for imp in imports_of(module, path, modules):
            at = f"{where}:{imp.line}"
            if imp.target.split(".")[0] in TORCH and not _within(module, TORCH_HOME):
                findings.append(f"torch: {at} {module} imports {imp.target} (torch belongs in {TORCH_HOME})")
            for name in imp.names:
                if name.startswith("_") and not name.startswith("__") and imp.target != module:
                    findings.append(f"private: {at} {module} imports {name} from {imp.target}")
            if imp.target not in modules:
                continue                            # outside the package (or a name in a package __init__)
            edges[module].add(imp.target)
            mine, theirs = floor_of(module), floor_of(imp.target)
            if mine is not None and theirs is not None and theirs > mine:
                findings.append(f"upward: {at} {module} (floor {mine}) imports {imp.target} (floor {theirs})")
            wing, other = wing_of(module), wing_of(imp.target)
            if wing and other and wing != other:
                findings.append(f"wing: {at} {module} imports {imp.target} (another wing)")
    findings += ["circle: " + " -> ".join(cycle) for cycle in find_cycles(edges)]
    return sorted(set(findings))


# ---------- the real tree ----------

REAL = {"onnxcomp": REPO / "onnxcomp", "onnxcomp.passes": REPO / "passes"}


def test_the_walker_sees_the_whole_package():
    modules = module_files(REAL)
    assert {"onnxcomp", "onnxcomp.graph.save", "onnxcomp.passes", "onnxcomp.passes.qdq.insert_qdq",
            "onnxcomp.cli", "onnxcomp.distill.trainer"} <= set(modules)
    edges = {imp.target for m, p in modules.items() for imp in imports_of(m, p, modules)}
    assert "onnxcomp.errors" in edges and "onnxcomp.graph.convert" in edges and "torch" in edges


def test_the_package_keeps_its_layout():
    findings = layout_findings(REAL)
    assert not findings, "layout rules broken:\n" + "\n".join(findings)


# ---------- the walker itself can fail ----------

def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_walker_finds_a_circle_an_upward_import_and_the_rest(tmp_path):
    _write(tmp_path / "onnxcomp", {
        "__init__.py": "from onnxcomp.cli import main\n",
        "errors.py": "",
        "graph/__init__.py": "",
        "graph/load.py": "from onnxcomp.graph import save\n",
        "graph/save.py": "def later():\n    from .load import helper\n",         # circle via a lazy import
        "measure/__init__.py": "",
        "measure/runtime.py": "from onnxcomp.pipeline.manager import PassManager\n",  # floor 2 -> 3
        "pipeline/__init__.py": "",
        "pipeline/manager.py": "from onnxcomp.errors import InputError\nfrom onnxcomp.graph.load import _cache\n",
        "cli/__init__.py": "import torch\nfrom onnxcomp.distill import api\n",
        "distill/__init__.py": "",
        "distill/api.py": "import torch\n",                                     # allowed here
        "stray.py": "",                                                           # on no floor
        "pipeline/uses_stray.py": "import onnxcomp.stray\n",
    })
    _write(tmp_path / "passes", {
        "__init__.py": "from . import qdq, prune\n",
        "qdq/__init__.py": "from ..prune import plan\n",                           # wing -> wing
        "prune/__init__.py": "",
        "prune/plan.py": "from onnxcomp.passes.qdq import *\n",
    })
    findings = layout_findings({"onnxcomp": tmp_path / "onnxcomp", "onnxcomp.passes": tmp_path / "passes"})
    kinds = [f.split(":")[0] for f in findings]
    assert "circle: onnxcomp.graph.load -> onnxcomp.graph.save -> onnxcomp.graph.load" in findings
    assert "circle: onnxcomp.passes.prune.plan -> onnxcomp.passes.qdq -> onnxcomp.passes.prune.plan" in findings
    assert any(f.startswith("upward: onnxcomp/measure/runtime.py:1 onnxcomp.measure.runtime (floor 2)")
               for f in findings)
    assert any("private:" in f and "_cache from onnxcomp.graph.load" in f for f in findings)
    assert [f for f in findings if f.startswith("torch:")] == [
        "torch: onnxcomp/cli/__init__.py:1 onnxcomp.cli imports torch (torch belongs in onnxcomp.distill)"]
    assert sum(k == "wing" for k in kinds) == 2                # qdq -> prune.plan and prune.plan -> qdq
    assert any(f.startswith("floor: onnxcomp.stray") for f in findings)
    # nothing else: the face importing features and distill importing torch are fine
    assert sorted(kinds) == ["circle", "circle", "floor", "private", "torch", "upward", "wing", "wing"], findings


def test_walker_passes_a_clean_package(tmp_path):
    _write(tmp_path / "onnxcomp", {
        "__init__.py": "import onnxcomp.cli\n",
        "errors.py": "",
        "graph/__init__.py": "from .load import load\n",
        "graph/load.py": "from onnxcomp.errors import InputError\nfrom . import _private\n",
        "graph/_private.py": "",                                                  # a module, not a name
        "cli/__init__.py": "def main():\n    from onnxcomp.graph import load\n",
    })
    assert layout_findings({"onnxcomp": tmp_path / "onnxcomp"}) == []
