"""A real IPython shell in the test process, with the extension loaded (see conftest.py)."""

from __future__ import annotations

from typing import Any


def run(ip: Any, source: str) -> Any:
    """Run a cell as a notebook would (stored in history); return its result, re-raising what it raised."""
    result = ip.run_cell(source, store_history=True)
    error = result.error_before_exec or result.error_in_exec
    if error is not None:
        raise error
    return result.result
