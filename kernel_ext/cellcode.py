"""What a `%%remote` cell reads and assigns, found from its syntax tree (pure, no I/O).

A cell is code, never a template: it is parsed as Python, nothing is expanded.
- `reads`: every name the cell loads (also inside its functions and lambdas): the
  notebook values of those names are shipped with the cell.
- `writes`: names the cell binds at its top level (assignments, for/with targets,
  imports, def, class): they come back into the notebook afterwards.
- `last_expr`: whether the last statement is an expression, whose value is displayed.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass


@dataclass(frozen=True)
class CellCode:
    source: str
    reads: tuple[str, ...]
    writes: tuple[str, ...]
    last_expr: bool


def analyze(source: str, filename: str = "<cell>", first_line: int = 1) -> CellCode:
    """Parse a cell; a SyntaxError carries the line number as the notebook shows it."""
    try:
        tree = ast.parse(source, filename)
    except SyntaxError as e:
        if e.lineno is not None:
            e.lineno += first_line - 1
        raise
    reads: dict[str, None] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
            reads.setdefault(node.id)
        elif isinstance(node, (ast.Global, ast.Nonlocal)):
            for name in node.names:
                reads.setdefault(name)
    writes: dict[str, None] = {}
    for stmt in tree.body:
        for name in _bound_at_top(stmt):
            writes.setdefault(name)
    last_expr = bool(tree.body) and isinstance(tree.body[-1], ast.Expr)
    return CellCode(source, tuple(reads), tuple(writes), last_expr)


def _bound_at_top(stmt: ast.stmt) -> list[str]:
    """Names a top-level statement binds in the module namespace (not inside defs)."""
    if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return [stmt.name]
    if isinstance(stmt, (ast.Import, ast.ImportFrom)):
        return [(a.asname or a.name).split(".")[0] for a in stmt.names if a.name != "*"]
    names: list[str] = []
    for node in _walk_same_scope(stmt):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.append(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node is not stmt:
            names.append(node.name)  # a def nested in an if/for/with at top level
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.extend((a.asname or a.name).split(".")[0] for a in node.names if a.name != "*")
    return names


def _walk_same_scope(node: ast.AST):  # noqa: ANN202 - a generator of nodes
    """ast.walk that does not enter function, class, lambda or comprehension scopes."""
    todo = [node]
    while todo:
        current = todo.pop()
        yield current
        for child in ast.iter_child_nodes(current):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                yield child
                todo.extend(child.decorator_list)
                continue
            if isinstance(child, (ast.Lambda, ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)):
                continue
            todo.append(child)


def parse_size(text: str) -> int:
    """'100MB', '1.5GiB', '512k', '1000' -> bytes. ValueError with a sentence otherwise."""
    units = {"": 1, "b": 1, "k": 1000, "kb": 1000, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
             "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
    s = text.strip().lower().replace("_", "")
    number = s.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = s[len(number):].strip()
    try:
        value = float(number)
    except ValueError:
        value = -1.0
    if unit not in units or value < 0:
        raise ValueError(f"Cannot read {text!r} as a size; write a number of bytes with an optional unit, "
                         "like 100MB, 512KiB or 2GB.")
    return int(value * units[unit])


def format_size(n: int) -> str:
    """Sizes as every view shows them: binary units (GiB, MiB, KiB), as the CLI and the lab do."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bytes"
