"""Tag what each cell submits (tasks, actors, objects) with the cell, so the widget and the lab
sidebar can filter by cell.

A tag is {"notebook": path or "", "cell_id": id, "execution_count": n}. JupyterLab sends a cell
id with each execution; a plain IPython shell has none, so `In[n]` stands in for it.
"""

from __future__ import annotations

import os
from typing import Any

from runtime._core import api_state, worker_state


def notebook_path(shell: Any) -> str:
    # ipykernel >= 6.23 sets __session__ to the notebook's path; JupyterLab also exports it.
    return str(shell.user_ns.get("__session__") or os.environ.get("JPY_SESSION_NAME") or "")


def _set(cell: dict | None) -> None:
    api_state.current_cell = cell
    cw = worker_state.current_or_none()
    if cw is not None:
        cw.current_cell = cell


class CellTagger:
    def __init__(self, shell: Any) -> None:
        self.shell = shell

    def pre_run_cell(self, info: Any) -> None:
        # The input history gets this cell only after pre_run_cell, and IPython versions differ
        # on when execution_count moves: the history's length is the number In[n] will have.
        hist = getattr(getattr(self.shell, "history_manager", None), "input_hist_raw", None)
        count = len(hist) if hist else self.shell.execution_count
        cell_id = getattr(info, "cell_id", None) or f"In[{count}]"
        _set({"notebook": notebook_path(self.shell), "cell_id": cell_id, "execution_count": count})

    def post_run_cell(self, result: Any) -> None:
        _set(None)

    def register(self) -> None:
        self.shell.events.register("pre_run_cell", self.pre_run_cell)
        self.shell.events.register("post_run_cell", self.post_run_cell)

    def unregister(self) -> None:
        for name, fn in (("pre_run_cell", self.pre_run_cell), ("post_run_cell", self.post_run_cell)):
            try:
                self.shell.events.unregister(name, fn)
            except ValueError:
                pass


def describe(cell: dict | None) -> str:
    """`In[3]` for a tag, as the widget shows it."""
    if not cell:
        return ""
    n = cell.get("execution_count")
    return f"In[{n}]" if n is not None else str(cell.get("cell_id", ""))
