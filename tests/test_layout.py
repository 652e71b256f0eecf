"""The package's layout rules: no import circles anywhere (function-level imports included), the
editing core never imports an editor, statistics never import editing, and the adapter never
imports an analysis or an editor. Read from the source with ``ast``, so no import runs."""

from __future__ import annotations

import ast
import pathlib
import warnings

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent / "interp_edit"


def _module_name(path: pathlib.Path, root: pathlib.Path) -> tuple[str, bool]:
    parts = path.relative_to(root.parent).with_suffix("").parts
    if parts[-1] == "__init__":
        return ".".join(parts[:-1]), True
    return ".".join(parts), False


def import_graph(root: pathlib.Path = ROOT) -> dict[str, set[str]]:
    """Module -> the interp_edit modules it imports (at any depth of the file); package
    ``__init__`` files are left out (they only re-export), and ``from pkg import name`` counts
    as importing ``pkg.name`` where that is a module."""
    modules, packages, raw = set(), set(), {}
    for path in root.rglob("*.py"):
        name, is_package = _module_name(path, root)
        (packages if is_package else modules).add(name)
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("interp_edit"):
                deps.add(node.module)
                deps |= {f"{node.module}.{alias.name}" for alias in node.names}
            elif isinstance(node, ast.Import):
                deps |= {alias.name for alias in node.names if alias.name.startswith("interp_edit")}
        raw[name] = deps
    return {m: {d for d in raw[m] if d in modules and d != m} for m in modules}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), sorted."""
    index, low, on_stack, stack, found = {}, {}, set(), [], []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
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
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def test_no_import_circles():
    assert cycles(import_graph()) == []


def test_the_circle_detector_finds_a_circle(tmp_path):
    pkg = tmp_path / "interp_edit"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from interp_edit.sub import b\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from interp_edit.c import g\n")
    (pkg / "c.py").write_text("import interp_edit.a\n")
    (pkg / "d.py").write_text("from interp_edit import a\n")
    graph = {m: deps for m, deps in import_graph(pkg).items()}
    assert cycles(graph) == [["interp_edit.a", "interp_edit.c", "interp_edit.sub.b"]]


def _imports(prefix: str) -> dict[str, set[str]]:
    return {m: deps for m, deps in import_graph().items() if m.startswith(prefix)}


@pytest.mark.parametrize("lower, upper", [
    ("interp_edit.editing.", "interp_edit.editing.methods."),  # the core never imports a method
    ("interp_edit.statistics.", "interp_edit.editing"),
    ("interp_edit.adapter.", "interp_edit.analysis"),
    ("interp_edit.adapter.", "interp_edit.editing"),
    ("interp_edit.adapter.", "interp_edit.statistics"),
    ("interp_edit.data.", "interp_edit.editing"),
])
def test_layers_import_downward(lower, upper):
    exempt = {"interp_edit.editing.registry"}  # the name -> editor table sits above the methods
    wrong = {m: sorted(d for d in deps if d.startswith(upper)) for m, deps in _imports(lower).items()
             if not m.startswith(upper) and m not in exempt}
    assert {m: d for m, d in wrong.items() if d} == {}


def test_model_module_is_retired_with_a_warning():
    import importlib
    import sys

    sys.modules.pop("interp_edit.model", None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = importlib.import_module("interp_edit.model")
    assert any(issubclass(w.category, DeprecationWarning) and "interp_edit.adapter" in str(w.message) for w in caught)
    from interp_edit.adapter import load_model

    assert module.load_model is load_model


def test_every_module_says_what_it_owns():
    missing = [str(p.relative_to(ROOT.parent)) for p in ROOT.rglob("*.py")
               if ast.get_docstring(ast.parse(p.read_text())) is None]
    assert missing == []
