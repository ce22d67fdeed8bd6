"""The process-wide current core worker (driver or worker)."""

from __future__ import annotations

from typing import Any

_current: Any = None


def current() -> Any:
    if _current is None:
        raise RuntimeError("The runtime is not initialized: call runtime.init() first.")
    return _current


def current_or_none() -> Any:
    return _current


def set_current(cw: Any) -> None:
    global _current
    _current = cw
