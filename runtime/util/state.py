"""State API: list what the cluster is doing (nodes, actors, objects, jobs, tasks).

Every function returns plain dicts and accepts Ray-style filters: `[("state", "=", "ALIVE")]`.
"""

from __future__ import annotations

from typing import Any

from .._core import api_state

__all__ = ["list_actors", "list_jobs", "list_nodes", "list_objects", "list_tasks", "summarize_tasks"]


def _gcs(msg: dict) -> dict:
    cw = api_state.ensure_initialized()
    reply, _ = cw.run_sync(cw.gcs_request(msg))
    return reply


def _filter(rows: list[dict], filters: list | None, limit: int | None) -> list[dict]:
    for key, op, value in filters or ():
        if op not in ("=", "!="):
            raise ValueError(f"Unsupported filter operator {op!r}; use '=' or '!='.")
        rows = [r for r in rows if (str(r.get(key)) == str(value)) == (op == "=")]
    return rows[:limit] if limit else rows


def list_nodes(filters: list | None = None, limit: int | None = None) -> list[dict]:
    rows = [{"node_id": n["node_id"], "state": "ALIVE" if n["alive"] else "DEAD", "node_ip": n["node_ip"],
             "is_head_node": n["is_head"], "resources_total": n["resources"], "hostname": n["hostname"]}
            for n in _gcs({"op": "list_nodes"})["nodes"]]
    return _filter(rows, filters, limit)


def list_actors(filters: list | None = None, limit: int | None = None) -> list[dict]:
    return _filter(_gcs({"op": "list_actors"})["actors"], filters, limit)


def list_jobs(filters: list | None = None, limit: int | None = None) -> list[dict]:
    return _filter(_gcs({"op": "list_jobs"})["jobs"], filters, limit)


def list_objects(filters: list | None = None, limit: int | None = None) -> list[dict]:
    """Every live object: id, size, owner, reference kinds, whether it is spilled."""
    reply = _gcs({"op": "list_objects"})
    return _filter(reply["objects"], filters, limit)


def object_store_stats() -> list[dict]:
    return _gcs({"op": "list_objects"})["stores"]


def list_tasks(filters: list | None = None, limit: int | None = None) -> list[dict]:
    """Tasks this driver submitted that have not finished yet."""
    cw = api_state.ensure_initialized()
    seen, rows = set(), []
    for spec in list(cw.tasks.values()):
        if spec.task_id in seen:
            continue
        seen.add(spec.task_id)
        state = "RUNNING" if (spec.lease is not None and spec.lease.busy is spec) or spec.actor_id else "PENDING"
        rows.append({"task_id": spec.task_id.hex(), "name": spec.name, "state": state,
                     "actor_id": spec.actor_id or None, "type": "ACTOR_TASK" if spec.actor_id else "NORMAL_TASK"})
    return _filter(rows, filters, limit)


def summarize_tasks() -> dict[str, Any]:
    summary: dict[str, dict] = {}
    for t in list_tasks():
        s = summary.setdefault(t["name"], {"PENDING": 0, "RUNNING": 0})
        s[t["state"]] += 1
    return summary
