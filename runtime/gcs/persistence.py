"""What the control store keeps across its own restart: its tables, written through to a table
storage (storage.py: SQLite in the session directory by default, Redis with
`gcs_storage="redis://HOST:PORT"`), one transaction per event-loop tick, and read back by a
control store started again in the same session.

Kept: nodes, jobs (drivers, and submitted jobs, which a restarted control store adopts),
actors (with their creation spec, so they can be restarted), placement groups, the KV store and
the job counter. Not kept: what is rebuilt on reconnection
(connections, subscriptions, each node's free resources) and the task table of the state API
(events are sent again as tasks change).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from .storage import TickWriter, decode, encode, open_storage

logger = logging.getLogger("runtime.gcs")

_VOLATILE_NODE_KEYS = ("last_heartbeat", "available", "pending")
TABLES = ("nodes", "jobs", "actors", "pgs", "kv", "meta", "subjobs")


class Persistence:
    def __init__(self, spec: str, session_dir: str, cluster: str) -> None:
        self.storage = open_storage(spec, session_dir, cluster=cluster)
        self.writer = TickWriter(self.storage)

    def load(self) -> dict[str, dict[str, Any]]:
        return {table: {k: decode(v) for k, v in self.storage.load(table).items()} for table in TABLES}

    # -- write-through, called where the control store changes a row --------------------------
    def node(self, node: dict) -> None:
        self.writer.put("nodes", node["node_id"], encode({k: v for k, v in node.items()
                                                          if k not in _VOLATILE_NODE_KEYS}))

    def job(self, job: dict) -> None:
        self.writer.put("jobs", job["job_id"], encode(job))

    def submitted_job(self, job: dict) -> None:
        self.writer.put("subjobs", job["job_id"], encode(job))

    def submitted_job_deleted(self, job_id: str) -> None:
        self.writer.delete("subjobs", job_id)

    def actor(self, rec: Any) -> None:
        row = {f.name: getattr(rec, f.name) for f in dataclasses.fields(rec) if f.name != "subscribers"}
        self.writer.put("actors", rec.actor_id, encode(row))

    def placement_group(self, rec: Any) -> None:
        row = {f.name: getattr(rec, f.name) for f in dataclasses.fields(rec) if f.name != "waiters"}
        self.writer.put("pgs", rec.pg_id, encode(row))

    def kv_put(self, key: str, value: bytes) -> None:
        self.writer.put("kv", key, encode(value))

    def kv_delete(self, key: str) -> None:
        self.writer.delete("kv", key)

    def meta(self, key: str, value: Any) -> None:
        self.writer.put("meta", key, encode(value))

    async def drain(self) -> None:
        """Until everything changed so far is stored."""
        await self.writer.drain()

    def close(self) -> None:
        try:
            self.writer.close()
        finally:
            self.storage.close()


class NoPersistence:
    """`gcs_storage="none"`: nothing is kept; a restarted control store starts empty."""

    def load(self) -> dict[str, dict[str, Any]]:
        return {t: {} for t in TABLES}

    async def drain(self) -> None:
        return None

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None
