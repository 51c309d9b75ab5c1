"""The static import graph of qtbench: no circles, and the report package layered.

Every ``import``/``from ... import`` of a ``qtbench`` module counts, wherever it
sits (a function-level import only delays a circle, it does not remove it).
``from pkg import name`` points at the submodule ``pkg.name`` when that file
exists, otherwise at ``pkg`` itself.  Importing ``pkg.mod`` initialises ``pkg``
first, but that implicit edge is left out: a package's ``__init__`` importing
its own submodules is not a circle.
"""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

PACKAGE = "qtbench"
ROOT = Path(__file__).resolve().parent.parent / PACKAGE


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    """Every module of the package by dotted name (``qtbench.report.tables``, ``qtbench.report``, ...)."""
    return {module_name(path): path for path in sorted(ROOT.rglob("*.py"))}


def _resolve(target: str, known: dict[str, Path]) -> str | None:
    """The longest known module that ``target`` names or lies in (``qtbench.x.attr`` -> ``qtbench.x``)."""
    while target and target not in known:
        target = target.rpartition(".")[0]
    return target or None


def imports_of(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The package modules that ``path`` imports, at any depth of its code."""
    is_package = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the module's package, up node.level - 1 more
                base = name if is_package else name.rpartition(".")[0]
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                source = f"{base}.{node.module}" if node.module else base
            else:
                source = node.module or ""
            targets = [f"{source}.{alias.name}" for alias in node.names]
        for target in targets:
            if target == PACKAGE or target.startswith(PACKAGE + "."):
                found = _resolve(target, known)
                if found and found != name:
                    out.add(found)
    return out


def import_graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports_of(name, path, known) for name, path in known.items()}


def find_cycles(graph: dict[str, set[str]], limit: int = 20) -> list[list[str]]:
    """Import circles, each as ``[a, b, ..., a]`` (``a`` imports ``b``, ... and the
    first name the smallest): one per pass of
    :class:`graphlib.TopologicalSorter`, breaking the reported circle's last edge
    before the next pass, so that every independent circle gets named."""
    graph = {node: set(targets) for node, targets in graph.items()}
    cycles = []
    while len(cycles) < limit:
        try:
            graphlib.TopologicalSorter(graph).prepare()
            return cycles
        except graphlib.CycleError as exc:
            cycle = list(exc.args[1])
            graph[cycle[1]].discard(cycle[0])
            ring = cycle[:0:-1]  # graphlib lists the circle against the import direction
            start = ring.index(min(ring))
            ring = ring[start:] + ring[:start]
            cycles.append(ring + ring[:1])
    return cycles


def test_the_graph_sees_function_level_and_relative_imports(tmp_path):
    package = tmp_path / PACKAGE
    (package / "sub").mkdir(parents=True)
    for name in ("__init__.py", "a.py", "b.py", "sub/__init__.py", "sub/c.py"):
        (package / name).write_text("")
    (package / "a.py").write_text("import os\n\ndef f():\n    from qtbench.sub import c\n    from qtbench.b import VALUE\n")
    (package / "sub" / "c.py").write_text("from .. import a\nfrom . import missing\nimport qtbench.b as b\n")
    known = {f"{PACKAGE}.a": package / "a.py", f"{PACKAGE}.b": package / "b.py", PACKAGE: package / "__init__.py",
             f"{PACKAGE}.sub": package / "sub" / "__init__.py", f"{PACKAGE}.sub.c": package / "sub" / "c.py"}
    assert imports_of(f"{PACKAGE}.a", known[f"{PACKAGE}.a"], known) == {"qtbench.sub.c", "qtbench.b"}
    assert imports_of(f"{PACKAGE}.sub.c", known[f"{PACKAGE}.sub.c"], known) == {"qtbench.a", "qtbench.sub", "qtbench.b"}
    graph = {name: imports_of(name, path, known) for name, path in known.items()}
    assert find_cycles(graph) == [["qtbench.a", "qtbench.sub.c", "qtbench.a"]]
    # direction and both circles of a figure eight: y imports z, z imports x, ...
    eight = {"x": {"y"}, "y": {"z"}, "z": {"x", "w"}, "w": {"z"}}
    assert sorted(find_cycles(eight)) == [["w", "z", "w"], ["x", "y", "z", "x"]]
    assert find_cycles({"x": {"y"}, "y": set()}) == []


def test_no_import_circles():
    cycles = find_cycles(import_graph())
    assert not cycles, "import circles:\n" + "\n".join(" -> ".join(cycle) for cycle in cycles)


#: The report package's layers: a module imports only from strictly lower layers.
REPORT_LAYERS = {"naming": 0, "render": 0, "intervals": 0, "runs": 1, "tables": 2, "noise": 2, "plots": 2,
                 "compare": 3, "aggregate": 3}


def test_report_modules_import_only_downward():
    graph = import_graph()
    report = {name for name in graph if name.startswith("qtbench.report.")}
    assert {name.rpartition(".")[2] for name in report} == set(REPORT_LAYERS)
    upward = []
    for name in sorted(report):
        layer = REPORT_LAYERS[name.rpartition(".")[2]]
        for target in sorted(graph[name]):
            if target.startswith("qtbench.report.") and REPORT_LAYERS[target.rpartition(".")[2]] >= layer:
                upward.append(f"{name} -> {target}")
    assert not upward, "report modules importing sideways or upward: " + ", ".join(upward)
    users = sorted(name for name, targets in graph.items()
                   if not name.startswith("qtbench.report") and any(t.startswith("qtbench.report") for t in targets))
    assert users == ["qtbench.cli"], "only the CLI reaches into the report (it is the top layer)"


#: The package's layers, lowest first: a module imports only from its own or lower
#: layers (the collectives never call up into the methods, the methods never into
#: the trainer, nothing but the CLI into the report).  Longest prefix wins.
PACKAGE_LAYERS = {
    "qtbench": 0, "qtbench.io": 0, "qtbench.items": 0, "qtbench.models": 0, "qtbench.tracking": 3,
    "qtbench.launch": 0, "qtbench.adapters": 0, "qtbench.resources": 3,
    "qtbench.data": 1, "qtbench.fsdp": 1, "qtbench.world.labels": 1,
    "qtbench.methods": 2,
    "qtbench.config": 3, "qtbench.train": 3, "qtbench.world": 3, "qtbench.evaluate": 3, "qtbench.paper_numbers": 3,
    "qtbench.eu_plane": 4, "qtbench.report": 4, "qtbench.preflight": 4,
    "qtbench.cli": 5,
}


def layer_of(name: str) -> int:
    prefix = name
    while prefix not in PACKAGE_LAYERS:
        if "." not in prefix:
            raise KeyError(f"{name} has no layer in PACKAGE_LAYERS: add it")
        prefix = prefix.rpartition(".")[0]
    return PACKAGE_LAYERS[prefix]


def test_no_module_imports_a_higher_layer():
    graph = import_graph()
    upward = [f"{name} (layer {layer_of(name)}) -> {target} (layer {layer_of(target)})"
              for name in sorted(graph) for target in sorted(graph[name]) if layer_of(target) > layer_of(name)]
    assert not upward, "imports of a higher layer:\n" + "\n".join(upward)


def test_the_collectives_and_the_step_are_where_the_decision_is():
    """train/parallel.py moves tensors only; train/step.py is the one module that asks a method to decide."""
    graph = import_graph()
    assert not {t for t in graph["qtbench.train.parallel"] if t.startswith("qtbench.methods.") and t != "qtbench.methods.base"}
    callers = sorted(name for name, path in modules().items() if ".select(" in path.read_text(encoding="utf-8")
                     and name.startswith("qtbench.train"))
    assert callers == ["qtbench.train.step"]
