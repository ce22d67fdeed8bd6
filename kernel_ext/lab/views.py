"""What each endpoint answers, from the public state API only (blocking: run via ClusterConnection.call).

Kept apart from the HTTP handlers so the shapes are plain functions of the state API.
"""

from __future__ import annotations

from typing import Any

import runtime
from runtime.util import state

DEFAULT_LIMIT = 1000


def cluster_summary(address: str) -> dict:
    """`address`: what the server was told ("auto", HOST:PORT); cluster_address: the control
    store it joined, which is what "auto" means at the moment."""
    from runtime._core import worker_state
    nodes = state.list_nodes()
    return {
        "address": address,
        "cluster_address": worker_state.current().gcs_address.removeprefix("tcp:"),
        "nodes": len(nodes),
        "alive_nodes": sum(1 for n in nodes if n.get("state") == "ALIVE"),
        "resources_total": runtime.cluster_resources(),
        "resources_available": runtime.available_resources(),
    }


def nodes() -> list[dict]:
    """Every node, with what is in use on the live ones (resources, object store, memory)."""
    live = {n["node_id"]: n for n in state.node_stats()}
    return [{**n, **live.get(n["node_id"], {})} for n in state.list_nodes()]


def tasks(cell: str | None, limit: int, notebook: str = "") -> list[dict]:
    """Tasks, or those of one cell: a cell id, or `In[13]` as the rows show it (of the notebook in
    focus when it is known, since every notebook has an In[13])."""
    import re
    shown = re.fullmatch(r"\s*In\s*\[\s*(\d+)\s*\]\s*", cell or "")
    if not shown:
        return state.list_tasks(filters=[("cell_id", "=", cell)] if cell else None, limit=limit)
    n = int(shown.group(1))
    rows = [t for t in state.list_tasks() if (t.get("cell") or {}).get("execution_count") == n
            and (not notebook or (t.get("cell") or {}).get("notebook") in ("", notebook))]
    return rows[:limit]


def actors(limit: int) -> list[dict]:
    return state.list_actors(limit=limit)


def placement_groups() -> list[dict]:
    # The state API gains list_placement_groups with placement groups; until then, none.
    fn = getattr(state, "list_placement_groups", None)
    return list(fn()) if fn is not None else []


def objects(limit: int) -> list[dict]:
    return state.list_objects(limit=limit)


def metrics() -> dict:
    total = runtime.cluster_resources()
    available = runtime.available_resources()  # omits resources with nothing free
    stores = state.object_store_stats()
    cpu_total = float(total.get("CPU", 0.0))
    return {
        "cpu": {"used": max(cpu_total - float(available.get("CPU", 0.0)), 0.0), "total": cpu_total},
        "gpu": {"used": max(float(total.get("GPU", 0.0)) - float(available.get("GPU", 0.0)), 0.0),
                "total": float(total.get("GPU", 0.0))},
        "object_store": {"used_bytes": sum(int(s.get("used_bytes", 0)) for s in stores),
                         "capacity_bytes": sum(int(s.get("capacity_bytes", 0)) for s in stores),
                         "num_objects": sum(int(s.get("num_objects", 0)) for s in stores)},
        "nodes": len(stores),
    }


class UnknownTask(LookupError):
    """No task with this id is known to the cluster."""


def cancel_task(task_id: str, force: bool) -> tuple[bool, str]:
    """(cancelled, the task's state as listed). UnknownTask if the cluster has no such task."""
    task_id = task_id.lower()
    rows = state.list_tasks(filters=[("task_id", "=", task_id)], limit=1)
    if not rows:
        raise UnknownTask(f"No task with id {task_id} is known to the cluster; "
                          "see the task_id column of /orrery/api/tasks.")
    return bool(state.cancel_task(task_id, force=force)), str(rows[0].get("state"))


def jsonable(value: Any) -> Any:
    """json.dumps default: ids may come as bytes, kinds as sets."""
    if isinstance(value, (bytes, bytearray)):
        return value.hex()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return str(value)
