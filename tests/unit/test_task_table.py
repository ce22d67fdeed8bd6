"""The control store's task table (runtime/gcs/tasks.py) past task_events_max_tasks: the tasks
that ended longest ago go first, unfinished ones stay, and trimming costs no scan of the table."""

from __future__ import annotations

from types import SimpleNamespace

from runtime.config import SystemConfig
from runtime.gcs.tasks import TaskTable

OWNER = object()  # stands for the submitter's connection; the table only keeps it


def _table(limit: int) -> TaskTable:
    return TaskTable(SimpleNamespace(config=SystemConfig(task_events_max_tasks=limit)))


def _send(table: TaskTable, *rows: tuple[str, str]) -> None:
    table.on_task_events(OWNER, {"tasks": [{"task_id": t, "state": s, "name": "f"} for t, s in rows]}, [])


def test_the_tasks_that_ended_first_go_first_and_unfinished_ones_stay():
    table = _table(3)
    _send(table, ("a", "PENDING"), ("b", "PENDING"), ("c", "PENDING"), ("d", "PENDING"))
    assert list(table.tasks) == ["a", "b", "c", "d"]  # over the limit, but none has ended
    _send(table, ("c", "FINISHED"), ("a", "FAILED"))  # c ended before a
    assert set(table.tasks) == {"a", "b", "d"}
    _send(table, ("e", "RUNNING"))
    assert set(table.tasks) == {"b", "d", "e"}
    assert table.counts()[("FINISHED", "f")] == 1 and table.counts()[("FAILED", "f")] == 1


def test_a_task_run_again_is_not_trimmed_as_ended():
    table = _table(2)
    _send(table, ("a", "FINISHED"), ("b", "PENDING"))
    _send(table, ("a", "RUNNING"))  # its lost result is being made again
    _send(table, ("c", "PENDING"))
    assert set(table.tasks) == {"a", "b", "c"}
