"""State API: list what the cluster is doing (nodes, actors, objects, jobs, tasks).

Every function returns plain dicts and accepts Ray-style filters: `[("state", "=", "ALIVE")]`.
The `list_*` functions take Ray's parameters, in Ray's order: `address` (joins that cluster
if this process has not joined one), `filters`, `limit` (default: every row, where Ray stops at
100), `timeout` (seconds for the control store's answer); `detail` is accepted and changes
nothing (rows always have every field), `raise_on_missing_output` and `_explain` are accepted
and unused (the control store's answer is never partial).
"""

from __future__ import annotations

from typing import Callable

from .._core.session import ensure_initialized

__all__ = ["cancel_task", "get_task", "list_actors", "list_jobs", "list_nodes", "list_objects",
           "list_placement_groups", "list_tasks", "node_stats", "object_store_stats", "summarize_tasks"]


def _gcs(msg: dict, timeout: float | None = None) -> dict:
    cw = ensure_initialized()
    reply, _ = cw.run_sync(cw.gcs_request(msg, timeout=timeout))
    return reply


def _listing(rows: Callable[[float | None], list[dict]]) -> Callable[..., list[dict]]:
    """A `list_*` function with Ray's signature around rows(timeout)."""
    def list_rows(address: str | None = None, filters: list | None = None, limit: int | None = None,
                  timeout: float = 30, detail: bool = False, raise_on_missing_output: bool = True,
                  _explain: bool = False) -> list[dict]:
        _join(address)
        return _filter(rows(timeout), filters, limit)
    list_rows.__name__ = list_rows.__qualname__ = "list_" + rows.__name__.lstrip("_")
    list_rows.__doc__ = rows.__doc__
    return list_rows


def _join(address: str | None) -> None:
    """Ray's state calls take the cluster's address; a process that has not joined one joins it."""
    from .._core import worker_state
    if address is not None and worker_state.current_or_none() is None:
        from .._core.session import init
        init(address=address)


def _filter(rows: list[dict], filters: list | None, limit: int | None) -> list[dict]:
    for key, op, value in filters or ():
        if op not in ("=", "!="):
            raise ValueError(f"Unsupported filter operator {op!r}; use '=' or '!='.")
        rows = [r for r in rows if (str(r.get(key)) == str(value)) == (op == "=")]
    return rows[:limit] if limit else rows


def _nodes(timeout: float | None = None) -> list[dict]:
    """Nodes: node_id, state (ALIVE/DEAD), node_ip, is_head_node, resources_total, hostname,
    death_reason, end_time, pid, labels."""
    return [{"node_id": n["node_id"], "state": "ALIVE" if n["alive"] else "DEAD", "node_ip": n["node_ip"],
             "is_head_node": n["is_head"], "resources_total": n["resources"], "hostname": n["hostname"],
             "death_reason": n.get("death_reason", ""), "end_time": n.get("end_time"), "pid": n.get("pid"),
             "labels": n.get("labels") or {}}
            for n in _gcs({"op": "list_nodes"}, timeout)["nodes"]]


list_nodes = _listing(_nodes)


def node_stats() -> list[dict]:
    """Per alive node: resources_total, resources_available, object_store (used/capacity/spilled),
    pending_demand (resource shapes waiting for a worker) and num_workers."""
    nodes = {n["node_id"]: n for n in list_nodes()}
    out = []
    for node_id, r in _gcs({"op": "cluster_resources"})["nodes"].items():
        base = nodes.get(node_id, {"node_id": node_id})
        out.append({**base, "resources_total": r["total"], "resources_available": r["available"],
                    "object_store": r["store"], "pending_demand": r.get("pending_demand"),
                    "num_workers": r.get("workers", 0), "memory_used_bytes": r.get("memory_used"),
                    "memory_total_bytes": r.get("memory_total")})
    return out


def _actors(timeout: float | None = None) -> list[dict]:
    """Actors: actor_id, class_name, name, namespace, state, node, pid, restarts, cell."""
    return _gcs({"op": "list_actors"}, timeout)["actors"]


def _jobs(timeout: float | None = None) -> list[dict]:
    """Jobs (drivers and submitted jobs)."""
    return _gcs({"op": "list_jobs"}, timeout)["jobs"]


def _objects(timeout: float | None = None) -> list[dict]:
    """Every live object: id, size, owner, reference kinds, whether it is spilled."""
    return _gcs({"op": "list_objects"}, timeout)["objects"]


list_actors, list_jobs, list_objects = _listing(_actors), _listing(_jobs), _listing(_objects)


def object_store_stats() -> list[dict]:
    return _gcs({"op": "list_objects"})["stores"]


def runtime_env_cache() -> dict:
    """Every node's runtime_env cache (unpacked packages, pip layers: kind, uri, path, bytes,
    workers using it, idle seconds), the head's job entrypoint cache, and the uploaded packages."""
    return _gcs({"op": "runtime_env_cache"})


def _tasks(timeout: float | None = None) -> list[dict]:
    """Tasks across the cluster, oldest first: submitted, running, and recently finished or failed.

    Rows: task_id, name, type, state (PENDING/RUNNING/FINISHED/FAILED/CANCELLED), job_id, actor_id,
    node_id, worker_id, parent_task_id, cell (the notebook cell that submitted it) and cell_id,
    error_type, error_message, creation_time, start_time, end_time. Each process reports its
    tasks' changes every `task_events_interval_s`; this process's own are sent first.
    """
    cw = ensure_initialized()
    cw.run_sync(cw.flush_task_events())
    return _gcs({"op": "list_tasks"}, timeout)["tasks"]


list_tasks = _listing(_tasks)


def get_task(task_id: str) -> dict | None:
    rows = list_tasks(filters=[("task_id", "=", task_id)])
    return rows[0] if rows else None


def summarize_tasks(address: str | None = None, timeout: float = 30, raise_on_missing_output: bool = True,
                    _explain: bool = False) -> dict[str, dict[str, int]]:
    """Counts by function name and state: {"f": {"FINISHED": 3, "RUNNING": 1}, ...}."""
    summary: dict[str, dict[str, int]] = {}
    for t in list_tasks(address, timeout=timeout):
        by_state = summary.setdefault(t["name"], {})
        by_state[t["state"]] = by_state.get(t["state"], 0) + 1
    return summary


def cancel_task(task_id: str, force: bool = False) -> bool:
    """Cancel a task by id from any process (its submitter does the cancelling, as for
    `runtime.cancel`). Returns False if it had already finished."""
    return bool(_gcs({"op": "cancel_task", "task_id": task_id, "force": force})["cancelled"])


def _placement_groups(timeout: float | None = None) -> list[dict]:
    """Placement groups: placement_group_id, name, strategy, state, bundles, bundle_nodes (the node
    of each bundle), pending_reason (why it is not placed yet), is_detached, cell."""
    return _gcs({"op": "list_pgs"}, timeout)["placement_groups"]


list_placement_groups = _listing(_placement_groups)
