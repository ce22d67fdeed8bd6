"""What the control store checks of the requests whose fields its tables keep: a bad value
kept in a table would break every later read (the state API, scheduling, restarts), so it is
refused as it comes in. Shared by server.py, actors.py and tasks.py, and importing none of them.
"""

from __future__ import annotations

import math
from typing import Any


def task_row(row: Any) -> bool:
    """A task event as core workers send them (runtime/_core/task_events.py): strings (or None),
    numbers for the times, a map for the notebook cell."""
    def ok(key: str, value: Any) -> bool:
        if key in ("creation_time", "start_time", "end_time"):
            return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))
        if key == "cell":
            return value is None or (isinstance(value, dict) and all(
                isinstance(v, (str, int, float, type(None))) for v in value.values()))
        return value is None or isinstance(value, str)
    return (isinstance(row, dict) and isinstance(row.get("task_id"), str) and isinstance(row.get("state"), str)
            and all(isinstance(k, str) and ok(k, v) for k, v in row.items()))


def amounts(resources: Any) -> None:
    """A node's resource view: names to numbers (CPU may be below zero while it is lent)."""
    if not isinstance(resources, dict) or not all(
            isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            for k, v in resources.items()):
        raise ValueError(f"resources are a map of names to numbers, not {resources!r}")


def typed(msg: dict, **types: type) -> None:
    """Fields of a request that a table keeps, checked as they come in."""
    for name, kind in types.items():
        value = msg[name]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ValueError(f"{name!r} must be {kind.__name__}, not {type(value).__name__}")

