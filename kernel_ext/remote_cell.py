"""The part of `%%remote` that runs in the cluster: execute a cell in a namespace.

Imported by workers (by reference, through cloudpickle), so it depends on the runtime
and the standard library only.
"""

from __future__ import annotations

import ast
import builtins
import linecache
import types
from typing import Any

import runtime
from runtime.serialization.core import serialize

# How a value travels back: ("value", v) | ("ref", ObjectRef, size) | ("unpicklable", repr, error)
Shipped = tuple


def run_cell(source: str, filename: str, first_line: int, namespace: dict, pull: list[str],
             last_expr: bool, max_bytes: int, value_apart: bool = False) -> dict | tuple[dict, Any]:
    """Run the cell; return the values of `pull` (those it defined) and of its last expression.
    Modules the cell imported are not sent back: the notebook has its own (and `import time`
    in a cell must not replace a notebook's `time` that is something else).

    value_apart: return (names, value) instead, for a task with num_returns=2 whose second
    ref is the `--async` handle: `runtime.get(handle)` is then the value itself."""
    # Tracebacks show the cell's own lines: the source is in linecache under the cell's name,
    # with the line numbers the notebook shows.
    padded = "\n" * (first_line - 1) + source
    linecache.cache[filename] = (len(padded), None, padded.splitlines(True), filename)
    tree = ast.parse(source, filename)
    ast.increment_lineno(tree, first_line - 1)
    last = None
    if last_expr:
        last = ast.Expression(tree.body.pop().value)
    ns = namespace  # a fresh dict for a task; a session's own namespace, kept across cells
    ns.setdefault("__name__", "__main__")
    ns["__builtins__"] = builtins
    exec(compile(tree, filename, "exec"), ns)  # noqa: S102 - running the user's cell is the point
    value = eval(compile(last, filename, "eval"), ns) if last is not None else None  # noqa: S307
    result: dict[str, Any] = {"names": {}}
    for name in pull:
        if name in ns and not isinstance(ns[name], types.ModuleType):
            result["names"][name] = ship_back(ns[name], max_bytes)
    if value_apart:
        return result, value
    if last is not None:
        result["value"] = ship_back(value, max_bytes)
    return result


def ship_back(value: Any, max_bytes: int) -> Shipped:
    """Small values come back as they are; large ones stay in the cluster as a ref."""
    try:
        size = serialize(value).total_bytes
    except Exception as e:  # noqa: BLE001 - reported to the notebook by name
        return ("unpicklable", _short_repr(value), f"{type(e).__name__}: {e}")
    if size > max_bytes:
        return ("ref", runtime.put(value), size)
    return ("value", value)


def _short_repr(value: Any) -> str:
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001
        text = f"<{type(value).__name__}>"
    return text if len(text) <= 80 else text[:77] + "..."


class SessionActor:
    """`%%remote --session NAME`: a namespace that lives in the cluster across cells (as an
    ipyparallel engine or a sparkmagic session does), held by a detached named actor so that it
    outlives the kernel; `%cluster attach NAME` finds it again after a restart."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.ns: dict = {"__name__": "__main__"}
        self.pulled: list[str] = []  # names cells sent back to the notebook, re-bound on attach
        self.cells = 0

    def run(self, source: str, filename: str, first_line: int, inputs: dict, pull: list[str],
            last_expr: bool, max_bytes: int, value_apart: bool = False) -> dict | tuple[dict, Any]:
        self.ns.update(inputs)
        out = run_cell(source, filename, first_line, self.ns, pull, last_expr, max_bytes, value_apart)
        result = out[0] if value_apart else out
        self.cells += 1
        for name in result["names"]:
            if name not in self.pulled:
                self.pulled.append(name)
        return out

    def pulled_values(self, max_bytes: int) -> dict:
        return {n: ship_back(self.ns[n], max_bytes) for n in self.pulled if n in self.ns}

    def info(self) -> dict:
        names = sorted(k for k in self.ns if not k.startswith("_"))
        return {"name": self.name, "cells": self.cells, "names": names, "pulled": list(self.pulled)}
