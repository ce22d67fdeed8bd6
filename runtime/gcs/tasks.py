"""The control store's task table, for the state API and the metrics: fed by the task events
the submitters send (runtime/_core/task_events.py), read by list_tasks, cluster_metrics and
cancel_task. Owned by the server (server.py), which passes itself as `host` for the config
(typed under TYPE_CHECKING only, so no import cycle).
"""

from __future__ import annotations

import collections
import itertools
import logging
import time
from typing import TYPE_CHECKING

from ..rpc.connection import Connection
from .checks import task_row

if TYPE_CHECKING:
    from .server import ControlStore

logger = logging.getLogger("runtime.gcs")


class TaskTable:
    def __init__(self, host: ControlStore) -> None:
        self.host = host
        self.tasks: dict[str, dict] = {}
        # The ended tasks in the order they ended: the oldest go first when the table is full.
        # (Scanning the whole table for them on every batch made a driver that queued 1M tasks
        # wait on the control store: each batch cost O(table), and 200 MB of events piled up.)
        self.ended: collections.OrderedDict[str, None] = collections.OrderedDict()
        # Tasks that ended, by (state, name), never trimmed: the `ray_tasks` metric of ended
        # states only grows, as Prometheus expects of a count.
        self.tasks_ended: collections.Counter = collections.Counter()
        # The connection of the process that submitted each unfinished task: it is asked to
        # cancel it, and its close fails the task.
        self.task_owner_conns: dict[str, Connection] = {}
        self.dropped = 0  # unfinished tasks dropped past task_events_max_unfinished_tasks

    def counts(self) -> collections.Counter:
        """Tasks by (state, name): those that ended, and those pending or running now."""
        tasks = collections.Counter(self.tasks_ended)
        for row in self.tasks.values():
            if row["state"] in ("PENDING", "RUNNING"):
                tasks[(row["state"], row.get("name") or "")] += 1
        return tasks

    def on_task_events(self, conn: Connection, msg: dict, bufs: list) -> None:
        for row in msg["tasks"]:
            if not task_row(row):  # kept, it would break the state API and the metrics on every read
                logger.warning("dropped a malformed task event: %.200r", row)
                continue
            tid = row["task_id"]
            old = self.tasks.get(tid)
            if old is None or old["state"] in ("PENDING", "RUNNING"):
                self._count_end(row)
            if old is None:
                self.tasks[tid] = row
            else:
                old.update((k, v) for k, v in row.items() if v is not None or k not in old)
            if row["state"] in ("PENDING", "RUNNING"):
                self.task_owner_conns[tid] = conn
                if old is not None:
                    self.ended.pop(tid, None)  # run again (a lost result rebuilt): not ended now
            else:
                self.task_owner_conns.pop(tid, None)
                self.ended[tid] = None
        self._trim_tasks()

    def _trim_tasks(self) -> None:
        """Past task_events_max_tasks, the tasks that ended longest ago go; past that many plus
        task_events_max_unfinished_tasks, the unfinished ones first reported go too."""
        config = self.host.config
        over = len(self.tasks) - config.task_events_max_tasks
        while over > 0 and self.ended:
            tid, _ = self.ended.popitem(last=False)
            if self.tasks.pop(tid, None) is not None:
                over -= 1
        over -= config.task_events_max_unfinished_tasks
        if over > 0:  # only unfinished tasks are left to drop: the oldest (a dict keeps insertion order)
            for tid in list(itertools.islice(self.tasks, over)):
                del self.tasks[tid]
                self.task_owner_conns.pop(tid, None)
            self.dropped += over

    def owner_gone(self, conn: Connection) -> None:
        """The tasks a process submitted cannot finish once it is gone: say so in the table."""
        for tid, c in list(self.task_owner_conns.items()):
            if c is conn:
                del self.task_owner_conns[tid]
                row = self.tasks.get(tid)
                if row is not None and row["state"] in ("PENDING", "RUNNING"):
                    row.update(state="FAILED", end_time=time.time(), error_type="OwnerDiedError",
                               error_message="the process that submitted it exited")
                    self._count_end(row)
                    self.ended[tid] = None

    def _count_end(self, row: dict) -> None:
        if row["state"] not in ("PENDING", "RUNNING"):
            self.tasks_ended[(row["state"], row.get("name") or "")] += 1

    def on_list_tasks(self, conn: Connection, msg: dict, bufs: list) -> dict:
        return {"tasks": list(self.tasks.values()), "total": len(self.tasks), "dropped": self.dropped}

    async def on_cancel_task(self, conn: Connection, msg: dict, bufs: list) -> dict:
        tid = msg["task_id"]
        row = self.tasks.get(tid)
        if row is None:
            raise ValueError(f"No task with id {tid} is known to the cluster (finished tasks are kept only "
                             "until the task table is full). List tasks with runtime.util.state.list_tasks().")
        owner = self.task_owner_conns.get(tid)
        if owner is None or owner.closed:
            return {"cancelled": False, "state": row["state"]}
        reply, _ = await owner.request({"op": "cancel_task", "t": bytes.fromhex(tid), "force": msg.get("force")},
                                       timeout=10)
        return {"cancelled": reply["cancelled"], "state": row["state"]}
