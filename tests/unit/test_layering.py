"""Each package of runtime/ reads top to bottom: no module imports, directly or through others,
a module that imports it back. Function-level imports count, because an import moved into a
function to dodge a cycle is still the same cycle; imports under `if TYPE_CHECKING:` do not,
since they never run.

The graph is built from the source (ast), not by importing, so it sees every import, including
the ones in functions that no test happens to call."""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).parents[2]
RUNTIME = ROOT / "runtime"
# The packages whose modules must not import in a circle. runtime.util is here because its
# placement_group and state sit on runtime._core's api_state: a circle through them would run
# between the two packages, so the graph spans all of them at once.
PACKAGES = ("runtime._core", "runtime.data", "runtime.util", "runtime.gcs", "runtime.node")


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules() -> dict[str, pathlib.Path]:
    return {module_name(p): p for p in RUNTIME.rglob("*.py") if "__pycache__" not in p.parts}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(tree: ast.AST):
    """Every Import/ImportFrom in the tree, at any depth, except under `if TYPE_CHECKING:`
    (its `else:` branch does run, so it is kept)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def imports_of(name: str, path: pathlib.Path, modules: dict[str, pathlib.Path]) -> set[str]:
    """The modules of runtime/ that `name` imports: `import a.b`, `from a import b` (a.b when b is
    a submodule, else a itself) and relative forms, resolved against the module's package."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in _import_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(base + ([node.module] if node.module else []))
            else:
                base = node.module
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                       for alias in node.names]
        found.update(t for t in targets if t in modules and t != name)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = all_modules()
    checked = {n: p for n, p in modules.items()
               if any(n == pkg or n.startswith(pkg + ".") for pkg in PACKAGES)}
    return {n: {t for t in imports_of(n, p, modules) if t in checked} for n, p in checked.items()}


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm (iterative): the groups of modules that reach each other."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    groups: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1:
                    groups.append(sorted(group))
    return groups


def a_cycle(graph: dict[str, set[str]], group: list[str]) -> list[str]:
    """The shortest circle through the group's first module, for the failure message."""
    members, start = set(group), group[0]
    previous: dict[str, str] = {}
    queue = [start]
    for node in queue:
        for target in sorted(graph[node] & members):
            if target == start:
                path = [node]
                while path[-1] != start:
                    path.append(previous[path[-1]])
                return [*reversed(path), start]
            if target not in previous:
                previous[target] = node
                queue.append(target)
    raise AssertionError(f"{group} is not a cycle")


def test_graph_sees_the_imports_it_should():
    """The resolver itself: relative, absolute, submodule-by-name and function-level imports."""
    graph = import_graph()
    assert "runtime._core.ids" in graph["runtime._core.remote_function"]  # from .ids import TaskID
    assert "runtime._core.worker_state" in graph["runtime._core.context"]  # from . import worker_state
    assert "runtime.data.block" in graph["runtime.data.dataset"]  # from . import block as B
    assert "runtime._core.object_ref" in graph["runtime.data.dataset"]  # from .._core.object_ref import


@pytest.mark.parametrize("package", PACKAGES)
def test_package_imports_are_acyclic(package):
    graph = import_graph()
    groups = [g for g in strongly_connected(graph) if any(m.startswith(package + ".") or m == package for m in g)]
    message = "\n".join(" -> ".join(a_cycle(graph, g)) + f"   (all of: {', '.join(g)})" for g in groups)
    assert not groups, f"import cycles:\n{message}"
