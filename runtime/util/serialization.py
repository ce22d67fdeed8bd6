"""Custom serializers and a diagnostic for what cannot be serialized."""

from __future__ import annotations

import sys
from typing import Any

import cloudpickle

from ..serialization.core import deregister_serializer, register_serializer, serialize

__all__ = ["deregister_serializer", "inspect_serializability", "register_serializer"]


def _serializable(obj: Any) -> bool:
    try:
        serialize(obj)
        return True
    except Exception:
        return False


def inspect_serializability(base_obj: Any, name: str | None = None, depth: int = 3,
                            print_file: Any = None) -> tuple[bool, set]:
    """Find what inside `base_obj` cannot be serialized.

    Returns (serializable, failures) where failures is a set of (name, type name) pairs of
    the innermost members that failed. Prints a short tree of the search, like Ray.
    """
    obj = base_obj
    out = print_file or sys.stdout
    name = name or getattr(obj, "__name__", None) or type(obj).__name__
    failures: set = set()
    ok = _inspect(obj, name, depth, failures, out, 0)
    print(("✔ " if ok else "✘ ") + f"{name} is {'serializable' if ok else 'not serializable'}", file=out)
    return ok, failures


def _inspect(obj: Any, name: str, depth: int, failures: set, out: Any, level: int) -> bool:
    if _serializable(obj):
        return True
    pad = "  " * level
    print(f"{pad}✘ {name} ({type(obj).__name__}) failed to serialize", file=out)
    members: list[tuple[str, Any]] = []
    if depth > 0:
        if isinstance(obj, dict):
            members = [(f"{name}[{k!r}]", v) for k, v in obj.items()]
        elif isinstance(obj, (list, tuple, set)):
            members = [(f"{name}[{i}]", v) for i, v in enumerate(obj)]
        elif callable(obj) and getattr(obj, "__code__", None) is not None:
            cv = cloudpickle.cloudpickle._extract_code_globals(obj.__code__)  # noqa: SLF001
            members = [(f"{name}.{g}", obj.__globals__[g]) for g in cv if g in obj.__globals__]
            if obj.__closure__:
                members += [(f"{name}.<closure {v}>", c.cell_contents)
                            for v, c in zip(obj.__code__.co_freevars, obj.__closure__)]
        elif hasattr(obj, "__dict__"):
            members = [(f"{name}.{k}", v) for k, v in vars(obj).items()]
    found = False
    for mname, value in members:
        if not _serializable(value):
            found = True
            _inspect(value, mname, depth - 1, failures, out, level + 1)
    if not found:
        failures.add((name, type(obj).__name__))
    return False
