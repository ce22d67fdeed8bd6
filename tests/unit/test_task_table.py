"""The control store's task table (runtime/gcs/tasks.py) past task_events_max_tasks: the tasks
that ended longest ago go first, unfinished ones stay up to task_events_max_unfinished_tasks,
and trimming costs no scan of the table."""

from __future__ import annotations

from types import SimpleNamespace

from runtime.config import SystemConfig
from runtime.gcs.tasks import TaskTable

OWNER = object()  # stands for the submitter's connection; the table only keeps it


def _table(limit: int, unfinished: int = 100_000) -> TaskTable:
    return TaskTable(SimpleNamespace(config=SystemConfig(task_events_max_tasks=limit,
                                                         task_events_max_unfinished_tasks=unfinished)))


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


def test_past_both_limits_the_oldest_unfinished_tasks_go_and_are_counted():
    table = _table(2, unfinished=3)
    _send(table, *[(f"t{i}", "PENDING") for i in range(7)])
    assert list(table.tasks) == ["t2", "t3", "t4", "t5", "t6"] and table.dropped == 2
    assert set(table.task_owner_conns) == set(table.tasks)
    _send(table, ("t0", "FINISHED"))  # a dropped task ends: counted (and, ended, trimmed first)
    assert table.counts()[("FINISHED", "f")] == 1 and list(table.tasks) == ["t2", "t3", "t4", "t5", "t6"]
    assert table.on_list_tasks(OWNER, {}, [])["dropped"] == 2
