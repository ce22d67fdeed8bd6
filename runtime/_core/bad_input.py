"""Errors for user mistakes, phrased so the user knows what to do next."""

from __future__ import annotations

from typing import Any

import cloudpickle


def _find_unpicklable_member(obj: Any, depth: int = 3) -> str | None:
    """Name the first member of `obj` (attribute, item) that cannot be pickled."""
    if depth <= 0:
        return None
    members: list[tuple[str, Any]] = []
    if isinstance(obj, dict):
        members = [(f"[{k!r}]", v) for k, v in obj.items()]
    elif isinstance(obj, (list, tuple, set)):
        members = [(f"[{i}]", v) for i, v in enumerate(obj)]
    elif hasattr(obj, "__dict__"):
        members = [(f".{k}", v) for k, v in vars(obj).items()]
    for name, value in members:
        try:
            cloudpickle.dumps(value)
        except Exception:
            deeper = _find_unpicklable_member(value, depth - 1)
            return name + (deeper or f" ({type(value).__name__})")
    return None


def unpicklable_argument_error(what: str, args: tuple, kwargs: dict, cause: Exception) -> TypeError:
    named = [(f"argument {i}", a) for i, a in enumerate(args)] + [(f"argument {k!r}", v) for k, v in kwargs.items()]
    for label, value in named:
        try:
            cloudpickle.dumps(value)
        except Exception as e:
            member = _find_unpicklable_member(value)
            where = f", member {member}" if member else ""
            return TypeError(
                f"Could not serialize {label} of {what} ({type(value).__name__}{where}): {e}. "
                "Objects such as locks, sockets, open files and thread pools cannot be sent to another process; "
                "create them inside the task, or register a serializer with runtime.util.register_serializer.")
    return TypeError(f"Could not serialize the arguments of {what}: {cause}")


def check_options(options: dict, allowed: set[str], what: str) -> None:
    unknown = sorted(set(options) - allowed)
    if unknown:
        import difflib
        hints = []
        for k in unknown:
            close = difflib.get_close_matches(k, allowed, n=1)
            hints.append(f"{k!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise ValueError(f"Unknown option(s) {', '.join(hints)} for {what}. Valid options: {', '.join(sorted(allowed))}.")
