"""The import graph of tat_ext (issue 18): no cycles, counting imports inside functions too; a name
is imported from the module that defines it (not through a package that re-exports it, nor through
``tat_ext`` itself); no module imports another module's private (underscore) names. Private
*modules* (``_validate``, ``_checks``, ``_vmap``, ``_extension``, the compiled ``_C``) are fine.

The graph is read from the source with ``ast``, so the test needs neither the compiled extension
nor any import to succeed."""
import ast
import functools
import os
from typing import Dict, List, Set, Tuple

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "tat_ext")


def _modules() -> Dict[str, str]:
    """Module name -> file, for every .py file of the package (a package is its __init__.py)."""
    found = {}
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(folder, name)
            parts = os.path.relpath(path, ROOT)[:-3].split(os.sep)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


MODULES = _modules()
# Compiled modules: importable, defined outside Python source.
COMPILED = {"tat_ext._C"}


@functools.lru_cache(maxsize=None)
def _tree(path: str) -> ast.AST:
    with open(path) as f:
        return ast.parse(f.read())


def _type_checking_only(tree: ast.AST) -> Set[int]:
    """ids of the import nodes under ``if TYPE_CHECKING:`` (never executed)."""
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(n) for child in node.body for n in ast.walk(child))
    return skipped


def _imports(module: str) -> List[Tuple[str, str, int]]:
    """(imported module, imported name or "", line) of every executed import of tat_ext's modules
    in ``module``, at any depth (functions included)."""
    tree = _tree(MODULES[module])
    skipped = _type_checking_only(tree)
    package = module if MODULES[module].endswith("__init__.py") else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found += [(a.name, "", node.lineno) for a in node.names if a.name.split(".")[0] == "tat_ext"]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            if base.split(".")[0] == "tat_ext":
                found += [(base, a.name, node.lineno) for a in node.names]
    return found


@functools.lru_cache(maxsize=None)
def _defined_names(module: str) -> Set[str]:
    """Names a module binds itself at its top level (functions, classes, assignments), not by import."""
    tree = _tree(MODULES[module])
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
    return names


def _edges() -> Dict[str, Set[str]]:
    """module -> the tat_ext modules it imports (the module a ``from M import name`` names is M, or
    M.name when that is a submodule)."""
    graph = {}
    for module in MODULES:
        targets = set()
        for base, name, _ in _imports(module):
            target = f"{base}.{name}" if name and f"{base}.{name}" in MODULES | dict.fromkeys(COMPILED) else base
            if target in MODULES and target != module:
                targets.add(target)
        graph[module] = targets
    return graph


def _cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    components = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def test_the_graph_is_read():
    graph = _edges()
    assert len(MODULES) > 40
    # Function-level imports count: cli.py imports tat_ext.train.commands inside build_parser.
    assert "tat_ext.train.commands" in graph["tat_ext.cli"]
    assert "tat_ext.train.loop" in graph["tat_ext.train.commands"]


def test_no_import_cycles():
    assert _cycles(_edges()) == []


def test_cycle_detection_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]


def _name_problems() -> List[str]:
    problems = []
    for module in sorted(MODULES):
        for base, name, line in _imports(module):
            if not name or f"{base}.{name}" in MODULES or f"{base}.{name}" in COMPILED:
                continue  # a module, private or not
            where = f"{MODULES[module]}:{line}"
            if name.startswith("_"):
                problems.append(f"{where}: imports the private name {name} of {base}")
            elif base in MODULES and name not in _defined_names(base):
                problems.append(f"{where}: imports {name} from {base}, which does not define it")
    return problems


def test_names_come_from_their_defining_module_and_are_public():
    assert _name_problems() == []


@pytest.mark.parametrize("source, problem", [
    ("from tat_ext import trelu", "imports trelu from tat_ext, which does not define it"),
    ("from tat_ext.init import _CONV_TYPES", "imports the private name _CONV_TYPES of tat_ext.init"),
])
def test_the_name_rule_catches_planted_imports(tmp_path, monkeypatch, source, problem):
    planted = tmp_path / "planted.py"
    planted.write_text(f"def f():\n    {source}\n")
    monkeypatch.setitem(MODULES, "tat_ext.planted", str(planted))
    assert [p for p in _name_problems() if problem in p] == [f"{planted}:2: {problem}"]
