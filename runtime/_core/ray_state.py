"""Ray's state API rows, built from the control store's tables: what the dashboard serves at
`/api/v0/{resource}` (so Ray's own `ray list` and `ray.util.state` clients work against us) and
what `runtime list/get/summary` print.

`runtime.util.state.list_*` in a process that joined the cluster return our own rows (a
superset, with the notebook cell that made each task or object); these are Ray's schema, column
for column (Ray 2.60's, checked by tests/unit/test_ray_state.py against tests/data/ray_signatures.json),
with Ray's states and names. Everything here is asked through `call(msg) -> (reply, bufs)`, an
async request to the control store, so the dashboard, the CLI and drivers share it.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any, Awaitable, Callable

from ..rpc.connection import connect

Call = Callable[[dict], Awaitable[tuple[dict, list]]]
RESOURCES = ("actors", "jobs", "nodes", "placement_groups", "workers", "tasks", "objects")
DEFAULT_LIMIT = 100  # Ray's
MAX_LIMIT = 10000  # Ray's RAY_MAX_LIMIT_FROM_API_SERVER

# Ray 2.60's columns: without detail, added with detail, and those a filter may name.
SCHEMAS: dict[str, dict[str, list[str]]] = {
    "actors": {"columns": ["actor_id", "class_name", "state", "job_id", "name", "node_id", "pid", "ray_namespace"],
               "detail_columns": ["serialized_runtime_env", "required_resources", "death_cause", "is_detached",
                                  "placement_group_id", "repr_name", "num_restarts",
                                  "num_restarts_due_to_lineage_reconstruction", "num_restarts_due_to_node_preemption",
                                  "call_site", "label_selector", "fallback_strategy"],
               "filterable": ["actor_id", "class_name", "job_id", "name", "node_id", "pid", "placement_group_id",
                              "ray_namespace", "repr_name", "state"]},
    "jobs": {"columns": ["job_id", "submission_id", "entrypoint", "type", "status", "message", "error_type",
                         "driver_info"],
             "detail_columns": ["start_time", "end_time", "metadata", "runtime_env", "driver_agent_http_address",
                                "driver_node_id", "driver_exit_code"],
             "filterable": ["job_id", "status", "submission_id", "type"]},
    "nodes": {"columns": ["node_id", "node_ip", "is_head_node", "state", "state_message", "node_name",
                          "resources_total", "labels"],
              "detail_columns": ["start_time_ms", "end_time_ms"],
              "filterable": ["is_head_node", "node_id", "node_ip", "node_name", "state"]},
    "placement_groups": {"columns": ["placement_group_id", "name", "creator_job_id", "state"],
                         "detail_columns": ["bundles", "is_detached", "stats", "topology_strategy",
                                            "topology_assignments"],
                         "filterable": ["creator_job_id", "is_detached", "name", "placement_group_id", "state"]},
    "workers": {"columns": ["worker_id", "is_alive", "worker_type", "exit_type", "node_id", "ip", "pid"],
                "detail_columns": ["exit_detail", "worker_launch_time_ms", "worker_launched_time_ms",
                                   "start_time_ms", "end_time_ms", "debugger_port", "num_paused_threads"],
                "filterable": ["debugger_port", "exit_type", "ip", "is_alive", "node_id", "num_paused_threads",
                               "pid", "worker_id", "worker_type"]},
    "tasks": {"columns": ["task_id", "attempt_number", "name", "state", "job_id", "actor_id", "type",
                          "func_or_class_name", "parent_task_id", "node_id", "worker_id", "worker_pid", "error_type"],
              "detail_columns": ["language", "required_resources", "runtime_env_info", "placement_group_id", "events",
                                 "profiling_data", "creation_time_ms", "start_time_ms", "end_time_ms",
                                 "task_log_info", "error_message", "is_debugger_paused", "call_site",
                                 "label_selector", "fallback_strategy"],
              "filterable": ["actor_id", "attempt_number", "error_type", "func_or_class_name", "is_debugger_paused",
                             "job_id", "language", "name", "node_id", "parent_task_id", "placement_group_id",
                             "state", "task_id", "type", "worker_id", "worker_pid"]},
    "objects": {"columns": ["object_id", "object_size", "task_status", "attempt_number", "reference_type",
                            "call_site", "type", "pid", "ip"],
                "detail_columns": [],
                "filterable": ["attempt_number", "call_site", "ip", "object_id", "object_size", "pid",
                               "reference_type", "task_status", "type"]},
}
# Our states in Ray's words, where they differ.
_ACTOR_STATE = {"PENDING": "PENDING_CREATION"}
_TASK_STATE = {"PENDING": "PENDING_NODE_ASSIGNMENT", "CANCELLED": "FAILED"}
_TASK_ERROR = {"TaskCancelledError": "TASK_CANCELLED", "WorkerCrashedError": "WORKER_DIED",
               "OwnerDiedError": "OWNER_DIED", "ActorDiedError": "ACTOR_DIED", "ObjectLostError": "OBJECT_LOST"}


class ControlStoreClient:
    """The cluster's control store, asked one request per connection: the dashboard and the CLI
    are not on any hot path, and a control store restarted meanwhile is simply reached again."""

    def __init__(self, address: str, token: str, kind: str = "dashboard") -> None:
        self.address, self.token, self.kind = address, token, kind

    async def call(self, msg: dict, bufs: list | tuple = (), timeout: float = 30.0) -> tuple[dict, list]:
        conn = await connect(self.address, {}, self.token, info={"kind": self.kind}, timeout=10, name=self.kind)
        try:
            return await conn.request(msg, bufs, timeout=timeout)
        finally:
            conn.close()


def _ms(t: float | None) -> int | None:
    return None if t is None else int(t * 1000)


# -- our rows in Ray's schema ----------------------------------------------------------------
def job_details(job: dict) -> dict:
    """Ray's JobDetails for one of our submitted jobs (times in ms, as Ray)."""
    return {"type": "SUBMISSION", "job_id": None, "submission_id": job["job_id"], "driver_info": None,
            "status": job["status"], "entrypoint": job.get("entrypoint", ""), "message": job.get("message") or "",
            "error_type": None, "start_time": _ms(job.get("start_time")), "end_time": _ms(job.get("end_time")),
            "metadata": job.get("metadata") or {}, "runtime_env": job.get("runtime_env") or {},
            "driver_agent_http_address": None, "driver_node_id": None, "driver_exit_code": job.get("exit_code")}


def driver_details(job: dict) -> dict:
    """Ray's JobDetails of a driver (a process that called init())."""
    return {"type": "DRIVER", "job_id": job["job_id"], "submission_id": None,
            "driver_info": {"id": job["job_id"], "node_ip_address": "127.0.0.1", "pid": str(job.get("driver_pid"))},
            "status": "RUNNING" if job.get("status") == "RUNNING" else "SUCCEEDED",
            "entrypoint": job.get("entrypoint", ""), "message": "", "error_type": None,
            "start_time": _ms(job.get("start_time") or 0), "end_time": _ms(job.get("end_time")), "metadata": {},
            "runtime_env": {}, "driver_agent_http_address": None, "driver_node_id": None, "driver_exit_code": None}


def _actor(a: dict) -> dict:
    death = a.get("death_cause")
    return {"actor_id": a["actor_id"], "class_name": a["class_name"], "state": _ACTOR_STATE.get(a["state"], a["state"]),
            "job_id": a["job_id"], "name": a.get("name") or "", "node_id": a.get("node_id") or None,
            "pid": a.get("pid") or None, "ray_namespace": a.get("namespace") or "",
            "serialized_runtime_env": None, "required_resources": a.get("required_resources") or {},
            "death_cause": {"actor_died_error_context": {"error_message": death}} if death else None,
            "is_detached": bool(a.get("is_detached")), "placement_group_id": a.get("placement_group_id"),
            "repr_name": "", "num_restarts": a.get("num_restarts", 0),
            "num_restarts_due_to_lineage_reconstruction": 0, "num_restarts_due_to_node_preemption": 0,
            "call_site": None, "label_selector": None, "fallback_strategy": None}


def _node(n: dict) -> dict:
    return {"node_id": n["node_id"], "node_ip": n["node_ip"], "is_head_node": bool(n["is_head"]),
            "state": "ALIVE" if n["alive"] else "DEAD", "state_message": n.get("death_reason") or None,
            "node_name": n["node_ip"], "resources_total": n["resources"], "labels": n.get("labels") or {},
            "start_time_ms": _ms(n.get("start_time")), "end_time_ms": _ms(n.get("end_time"))}


def _placement_group(g: dict) -> dict:
    nodes = g.get("bundle_nodes") or []
    bundles = [{"bundle_id": f"{g['placement_group_id']}:{i}", "node_id": nodes[i] if i < len(nodes) else None,
                "unit_resources": b, "label_selector": {}} for i, b in enumerate(g.get("bundles") or [])]
    return {"placement_group_id": g["placement_group_id"], "name": g.get("name") or "",
            "creator_job_id": g.get("job_id") or "", "state": g["state"], "bundles": bundles,
            "is_detached": bool(g.get("is_detached")), "stats": g.get("stats"), "topology_strategy": None,
            "topology_assignments": None}


def _worker(w: dict) -> dict:
    code = w.get("exit_code")
    exit_type = None if w["is_alive"] else ("INTENDED_USER_EXIT" if code in (0, None) else "SYSTEM_ERROR")
    return {"worker_id": w["worker_id"], "is_alive": w["is_alive"], "worker_type": w["worker_type"],
            "exit_type": exit_type, "node_id": w["node_id"], "ip": w["ip"], "pid": w.get("pid"),
            "exit_detail": None if w["is_alive"] else f"exit code {code}",
            "worker_launch_time_ms": _ms(w.get("start_time")), "worker_launched_time_ms": _ms(w.get("start_time")),
            "start_time_ms": _ms(w.get("start_time")), "end_time_ms": _ms(w.get("end_time")),
            "debugger_port": None, "num_paused_threads": None}


def _task(t: dict) -> dict:
    state = _TASK_STATE.get(t["state"], t["state"])
    error_type, message = t.get("error_type") or None, t.get("error_message") or None
    if error_type:
        message = f"{error_type}: {message}" if message else error_type
        error_type = "TASK_CANCELLED" if t["state"] == "CANCELLED" else _TASK_ERROR.get(error_type,
                                                                                        "TASK_EXECUTION_EXCEPTION")
    events = [{"state": s, "created_ms": _ms(t.get(k))} for s, k in
              (("PENDING_NODE_ASSIGNMENT", "creation_time"), ("RUNNING", "start_time")) if t.get(k)]
    if t.get("end_time"):
        events.append({"state": state, "created_ms": _ms(t["end_time"])})
    return {"task_id": t["task_id"], "attempt_number": 0, "name": t["name"], "state": state, "job_id": t.get("job_id"),
            "actor_id": t.get("actor_id") or None, "type": t.get("type") or "NORMAL_TASK",
            "func_or_class_name": t.get("func_or_class_name") or t["name"],
            "parent_task_id": t.get("parent_task_id") or "", "node_id": t.get("node_id") or None,
            "worker_id": t.get("worker_id") or None, "worker_pid": t.get("worker_pid"), "error_type": error_type,
            "language": "PYTHON", "required_resources": t.get("required_resources") or {}, "runtime_env_info": None,
            "placement_group_id": None, "events": events, "profiling_data": None,
            "creation_time_ms": _ms(t.get("creation_time")), "start_time_ms": _ms(t.get("start_time")),
            "end_time_ms": _ms(t.get("end_time")), "task_log_info": None, "error_message": message,
            "is_debugger_paused": None, "call_site": None, "label_selector": None, "fallback_strategy": None}


def _object(o: dict, ips: dict[str, str]) -> dict:
    status = {"PENDING": "SUBMITTED_TO_WORKER", "ERROR": "FAILED"}.get(o.get("state", ""), "FINISHED")
    # A borrower's reference is a local one in Ray's terms.
    kinds = [k for k in o.get("reference_kinds") or () if k != "BORROWED"] or ["LOCAL_REFERENCE"]
    return {"object_id": o["object_id"], "object_size": o.get("size_bytes", 0), "task_status": status,
            "attempt_number": 0, "reference_type": kinds[0],
            "call_site": o.get("call_site") or "disabled", "type": "DRIVER" if o.get("owner_is_driver") else "WORKER",
            "pid": o.get("owner_pid"), "ip": ips.get(o.get("node_id", ""), "127.0.0.1")}


async def our_rows(resource: str, call: Call) -> list[dict]:
    """The rows of one resource in our own shape (the control store's tables)."""
    op = {"actors": "list_actors", "jobs": "list_jobs", "nodes": "list_nodes", "placement_groups": "list_pgs",
          "workers": "list_workers", "tasks": "list_tasks", "objects": "list_objects"}[resource]
    reply, _ = await call({"op": op})
    return reply[{"placement_groups": "placement_groups"}.get(resource, resource)]


async def ray_rows(resource: str, call: Call) -> list[dict]:
    """Every row of a resource, in Ray's schema with every detail column."""
    rows = await our_rows(resource, call)
    if resource == "jobs":
        return [driver_details(j) if j.get("type") == "DRIVER" else job_details(j) for j in rows]
    if resource == "objects":
        nodes, _ = await call({"op": "list_nodes"})
        ips = {n["node_id"]: n["node_ip"] for n in nodes["nodes"]}
        return [_object(o, ips) for o in rows]
    shape = {"actors": _actor, "nodes": _node, "placement_groups": _placement_group, "workers": _worker,
             "tasks": _task}[resource]
    return [shape(r) for r in rows]


# -- listing: filters, limit, detail, as Ray's server --------------------------------------------
def _matches(value: Any, predicate: str, wanted: str) -> bool:
    if isinstance(value, bool):
        equal = str(value).lower() == wanted.strip().lower() or wanted.strip() == str(int(value))
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            equal = float(wanted) == value
        except ValueError:
            equal = False
    elif isinstance(value, str):
        equal = value.lower() == wanted.lower()  # Ray matches strings case-insensitively
    else:
        equal = str(value) == wanted
    return equal if predicate == "=" else not equal


def check_filters(resource: str, filters: list) -> list[tuple[str, str, str]]:
    """The filters, checked: a column Ray allows, '=' or '!='; a ValueError saying what is wrong."""
    allowed = SCHEMAS[resource]["filterable"]
    out = []
    for f in filters or ():
        if len(f) != 3:
            raise ValueError(f"The given filter has incorrect input type, {f}. Provide (key, predicate, value) tuples.")
        key, predicate, value = f
        key = str(key).lower()
        if key not in allowed:
            raise ValueError(f"The given filter column {key} is not supported. Enter filters with --filter "
                             f"key=value or --filter key!=value. Supported filter columns: {allowed}")
        if predicate not in ("=", "!="):
            raise ValueError(f"Unsupported filter predicate {predicate!r}: use '=' or '!='.")
        out.append((key, predicate, str(value)))
    return out


async def list_state(resource: str, call: Call, filters: list | None = None, limit: int = DEFAULT_LIMIT,
                     detail: bool = False) -> dict:
    """Ray's ListApiResponse: `result`, at most `limit` rows (detail columns only with `detail`);
    `total` and `num_after_truncation` before filtering (the same here: no source truncates),
    `num_filtered` after it (more than `limit`: Ray's client warns that some were left out)."""
    if resource not in SCHEMAS:
        raise ValueError(f"Unknown resource {resource!r}: one of {', '.join(RESOURCES)}.")
    if not 0 < limit <= MAX_LIMIT:
        raise ValueError(f"Given limit {limit} is not between 1 and the supported limit {MAX_LIMIT}; "
                         "use a lower limit.")
    checked = check_filters(resource, filters or [])
    rows = await ray_rows(resource, call)
    total = len(rows)  # nothing is cut at the source: the control store answers with every row
    rows = [r for r in rows if all(k in r and _matches(r[k], p, v) for k, p, v in checked)]
    filtered = len(rows)
    columns = SCHEMAS[resource]["columns"] + (SCHEMAS[resource]["detail_columns"] if detail else [])
    rows = [{c: r.get(c) for c in columns} for r in rows[:limit]]
    return {"total": total, "num_after_truncation": total, "num_filtered": filtered, "result": rows,
            "partial_failure_warning": "", "warnings": None}


# -- summaries, as Ray's `ray summary` -----------------------------------------------------------
async def summarize(resource: str, call: Call) -> dict:
    """Ray's SummaryApiResponse for tasks, actors or objects (one summary for the cluster, under
    the key "cluster", as Ray's)."""
    rows = await ray_rows(resource, call)
    if resource == "tasks":
        groups: dict[str, dict] = {}
        for t in rows:
            g = groups.setdefault(t["func_or_class_name"], {"func_or_class_name": t["func_or_class_name"],
                                                            "type": t["type"], "state_counts": Counter()})
            g["state_counts"][t["state"]] += 1
        summary = {k: {**g, "state_counts": dict(g["state_counts"])} for k, g in groups.items()}
        result = {"summary": summary, "total_tasks": len(rows),
                  "total_actor_tasks": sum(1 for t in rows if t["type"] == "ACTOR_TASK"),
                  "total_actor_scheduled": sum(1 for t in rows if t["type"] == "ACTOR_CREATION_TASK"),
                  "summary_by": "func_name"}
    elif resource == "actors":
        groups = {}
        for a in rows:
            g = groups.setdefault(a["class_name"], {"class_name": a["class_name"], "state_counts": Counter()})
            g["state_counts"][a["state"]] += 1
        summary = {k: {**g, "state_counts": dict(g["state_counts"])} for k, g in groups.items()}
        result = {"summary": summary, "total_actors": len(rows), "summary_by": "class"}
    elif resource == "objects":
        groups = {}
        for o in rows:
            g = groups.setdefault(o["call_site"], {"total_objects": 0, "total_size_mb": 0.0,
                                                   "total_num_workers": set(), "total_num_nodes": set(),
                                                   "task_state_counts": Counter(), "ref_type_counts": Counter()})
            g["total_objects"] += 1
            g["total_size_mb"] += (o["object_size"] or 0) / 2**20
            g["total_num_workers"].add(o["pid"])
            g["total_num_nodes"].add(o["ip"])
            g["task_state_counts"][o["task_status"]] += 1
            g["ref_type_counts"][o["reference_type"]] += 1
        summary = {k: {**g, "total_num_workers": len(g["total_num_workers"]),
                       "total_num_nodes": len(g["total_num_nodes"]), "task_state_counts": dict(g["task_state_counts"]),
                       "ref_type_counts": dict(g["ref_type_counts"])} for k, g in groups.items()}
        result = {"summary": summary, "total_objects": len(rows),
                  "total_size_mb": sum((o["object_size"] or 0) for o in rows) / 2**20,
                  "callsite_enabled": any(o["call_site"] != "disabled" for o in rows), "summary_by": "callsite"}
    else:
        raise ValueError(f"Summaries are of tasks, actors or objects, not {resource!r}.")
    return {"total": len(rows), "num_after_truncation": len(rows), "num_filtered": len(rows),
            "result": {"node_id_to_summary": {"cluster": result}}, "partial_failure_warning": "", "warnings": None}


# -- timeline --------------------------------------------------------------------------------------
def timeline(tasks: list[dict], now: float | None = None) -> list[dict]:
    """Chrome trace events (Perfetto, chrome://tracing) of task and actor-call execution: one
    row ("thread") per worker, grouped by node ("process"); a running task ends now."""
    now = now or time.time()
    events: list[dict] = []
    pids: dict[str, int] = {}
    tids: dict[tuple, int] = {}
    for t in tasks:
        start = t.get("start_time")
        if not start:
            continue
        node, worker = t.get("node_id") or "?", t.get("worker_id") or "?"
        pid = pids.setdefault(node, len(pids) + 1)
        if (node, worker) not in tids:
            tids[(node, worker)] = len(tids) + 1
            events.append({"ph": "M", "name": "thread_name", "pid": pid, "tid": tids[(node, worker)],
                           "args": {"name": f"worker {worker[:8]}"}})
        end = t.get("end_time") or now
        events.append({"ph": "X", "name": t["name"], "cat": t.get("type") or "NORMAL_TASK", "pid": pid,
                       "tid": tids[(node, worker)], "ts": start * 1e6, "dur": max(0.0, end - start) * 1e6,
                       "args": {"task_id": t["task_id"], "state": t["state"], "job_id": t.get("job_id"),
                                "error": t.get("error_message") or None}})
    for node, pid in pids.items():
        events.append({"ph": "M", "name": "process_name", "pid": pid, "args": {"name": f"node {node[:8]}"}})
    return events


# -- logs -------------------------------------------------------------------------------------------
async def find_log(call: Call, *, actor_id: str | None = None, task_id: str | None = None,
                   worker_id: str | None = None, pid: int | None = None, suffix: str = "out") -> dict:
    """Which node and file hold the output of an actor, a task, or a worker (by id or pid):
    {"node_id", "filename", "task_id"}; a ValueError that says what was not found."""
    if suffix not in ("out", "err"):
        raise ValueError(f"suffix is 'out' or 'err', not {suffix!r}.")
    workers = await our_rows("workers", call)
    only_task = None
    if task_id:
        task = next((t for t in await our_rows("tasks", call) if t["task_id"] == task_id), None)
        if task is None:
            raise ValueError(f"No task {task_id!r} in the state table (`runtime list tasks`).")
        if not task.get("worker_id"):
            raise ValueError(f"Task {task_id} has not started on a worker yet (state {task['state']}).")
        worker_id, only_task = task["worker_id"], task_id
    match = [w for w in workers if (actor_id and w.get("actor_id") == actor_id) or
             (worker_id and w["worker_id"] == worker_id) or (pid and w.get("pid") == pid)]
    if not match:
        what = f"actor {actor_id}" if actor_id else f"worker {worker_id}" if worker_id else f"pid {pid}"
        raise ValueError(f"No worker process of {what} is known (it may have exited long ago, or be a "
                         "driver, whose output is its own); `runtime list workers` shows them.")
    w = match[-1]
    return {"node_id": w["node_id"], "filename": f"worker-{w['worker_id']}.{suffix}", "task_id": only_task}


async def read_log(call: Call, node_id: str | None, filename: str, lines: int | None = None,
                   offset: int | None = None, task_id: str | None = None) -> dict:
    """{"text", "offset", "size"} of a node's log file; ValueError / FileNotFoundError."""
    reply, _ = await call({"op": "read_log", "node_id": node_id, "filename": filename, "lines": lines,
                           "offset": offset, "task_id": task_id})
    if "error" in reply:
        raise (FileNotFoundError if reply.get("not_found") else ValueError)(reply["error"])
    return reply
