"""Task events: what each submitted task is doing, reported to the control store for the state API.

The submitting process knows every transition of its tasks (submitted, running on a worker,
finished or failed), so it records them and sends them in one batch per interval, as Ray's
task-event buffer does. Recording is one `list.append` on the submit path; the rows are built
when the batch is flushed, on the io thread.
"""

from __future__ import annotations

import time
from typing import Any

PENDING, RUNNING, FINISHED, FAILED, CANCELLED = "PENDING", "RUNNING", "FINISHED", "FAILED", "CANCELLED"


def error_summary(err: BaseException | None) -> tuple[str, str]:
    """(type name, first line of the message) of a task's error, unwrapping TaskError."""
    if err is None:
        return "", ""
    cause = getattr(err, "cause", None) or err
    text = str(cause).strip().splitlines()
    return type(cause).__name__, (text[0] if text else "")[:300]


class TaskEventBuffer:
    """Transitions recorded by any thread; `drain()` (io thread) turns them into rows."""

    def __init__(self, owner_address: str) -> None:
        self.owner_address = owner_address
        self.events: list[tuple] = []

    def record(self, spec: Any, state: str, extra: Any = None) -> None:
        self.events.append((spec, state, time.time(), extra))

    def drain(self, node_id: str, job_id: str) -> list[dict]:
        events, self.events = self.events, []
        rows: dict[bytes, dict] = {}
        for spec, state, t, extra in events:
            row = rows.get(spec.task_id)
            if row is None:
                row = rows[spec.task_id] = self._row(spec, job_id)
            row["state"] = state
            if state == PENDING:
                row["creation_time"] = t
            elif state == RUNNING:
                row["start_time"] = t
                row["worker_id"], row["node_id"] = extra or ("", node_id)
            else:
                row["end_time"] = t
                row["error_type"], row["error_message"] = error_summary(extra)
        return list(rows.values())

    def _row(self, spec: Any, job_id: str) -> dict:
        cell = spec.cell
        return {"task_id": spec.task_id.hex(), "name": spec.name, "job_id": job_id,
                "type": "ACTOR_CREATION_TASK" if spec.is_actor_creation else
                        ("ACTOR_TASK" if spec.actor_id else "NORMAL_TASK"),
                "actor_id": spec.actor_id or None, "parent_task_id": spec.parent.hex() if spec.parent else None,
                "owner_address": self.owner_address, "cell": cell, "cell_id": cell.get("cell_id") if cell else None,
                "func_or_class_name": spec.name}
