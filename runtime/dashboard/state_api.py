"""Ray's state API over HTTP (`ray.dashboard.modules.state.state_head`): `/api/v0/{resource}`
with Ray's query parameters and answer envelope, the summaries, and the task timeline. Ray's
`ray list ... --address http://HOST:8265` and `ray.util.state.list_*(address=...)` read these;
the rows come from runtime/_core/ray_state.py."""

from __future__ import annotations

import json

from aiohttp import web

from .._core import ray_state

routes = web.RouteTableDef()


def reply(result: object, status: int = 200, message: str = "") -> web.Response:
    """Ray's envelope: {"result": ok, "msg": why not, "data": {"result": ...}}."""
    return web.json_response({"result": status == 200, "msg": message, "data": {"result": result}},
                             status=status, dumps=lambda o: json.dumps(o, default=str))


def _options(request: web.Request) -> tuple[list, int, bool]:
    q = request.query
    keys, predicates, values = q.getall("filter_keys", []), q.getall("filter_predicates", []), \
        q.getall("filter_values", [])
    if not len(keys) == len(predicates) == len(values):
        raise ValueError("filter_keys, filter_predicates and filter_values must come in threes "
                         f"(got {len(keys)}, {len(predicates)} and {len(values)}).")
    try:
        limit = int(q.get("limit", ray_state.DEFAULT_LIMIT))
    except ValueError:
        raise ValueError(f"limit must be a whole number, got {q.get('limit')!r}.") from None
    detail = q.get("detail", "false").strip().lower() in ("1", "true", "yes")
    return list(zip(keys, predicates, values)), limit, detail


@routes.get(r"/api/v0/{resource:(?!logs$)[^/]+}")  # /api/v0/logs is below
async def list_resource(request: web.Request) -> web.Response:
    resource = request.match_info["resource"]
    if resource not in ray_state.RESOURCES:
        return reply(None, 404, f"No state resource {resource!r}: one of {', '.join(ray_state.RESOURCES)}.")
    try:
        filters, limit, detail = _options(request)
        return reply(await ray_state.list_state(resource, request.app["gcs"].call, filters, limit, detail))
    except ValueError as e:
        return reply(None, 400, str(e))


@routes.get("/api/v0/{resource}/summarize")
async def summarize(request: web.Request) -> web.Response:
    resource = request.match_info["resource"]
    if resource not in ("tasks", "actors", "objects"):
        return reply(None, 404, f"Summaries are of tasks, actors or objects, not {resource!r}.")
    return reply(await ray_state.summarize(resource, request.app["gcs"].call))


@routes.get("/api/v0/tasks/timeline")
async def tasks_timeline(request: web.Request) -> web.Response:
    """Chrome trace JSON of task execution (Perfetto opens it); `job_id` keeps one job's tasks,
    `download=1` makes it a file."""
    rows = await ray_state.our_rows("tasks", request.app["gcs"].call)
    job = request.query.get("job_id")
    events = ray_state.timeline([t for t in rows if not job or t.get("job_id") == job])
    headers = {"Content-Disposition": 'attachment; filename="timeline.json"'} if request.query.get("download") == "1" \
        else {}
    return web.json_response(events, headers=headers)


async def _node_id(request: web.Request) -> str | None:
    """The node a logs request names, by `node_id` or `node_ip` (Ray's parameters)."""
    node_id, node_ip = request.query.get("node_id"), request.query.get("node_ip")
    if node_id or not node_ip:
        return node_id
    nodes, _ = await request.app["gcs"].call({"op": "list_nodes"})
    return next((n["node_id"] for n in nodes["nodes"] if n["node_ip"] == node_ip and n["alive"]), None)


@routes.get("/api/v0/logs")
async def list_logs(request: web.Request) -> web.Response:
    """Ray's list_logs: one node's log files by group (worker_out, raylet, gcs_server, ...)."""
    if not request.query.get("node_id") and not request.query.get("node_ip"):
        return reply(None, 400, "Both node id and node ip are not provided. Please provide at least one of them.")
    node_id = await _node_id(request)
    if node_id is None:
        return reply(None, 404, f"Cannot find matching node_id for a given node ip {request.query.get('node_ip')}")
    try:
        answer, _ = await request.app["gcs"].call({"op": "list_logs", "node_id": node_id,
                                                   "glob": request.query.get("glob", "*")})
    except Exception as e:  # noqa: BLE001 - the control store's refusal (no such node) says why
        return reply(None, 404, str(e))
    return reply(answer["nodes"][node_id])


@routes.get("/api/v0/logs/file")
async def get_log(request: web.Request) -> web.Response:
    """A log as text: `filename` on `node_id`/`node_ip`, or the log of `actor_id`, `task_id` or
    `pid` (`suffix` out or err), its last `lines` lines (1000 by default, as Ray)."""
    q = request.query
    call = request.app["gcs"].call
    try:
        lines = int(q.get("lines", 1000))
        task_id = None
        if q.get("filename"):
            node_id, filename = await _node_id(request), q["filename"]
        else:
            pid = int(q["pid"]) if q.get("pid") else None
            found = await ray_state.find_log(call, actor_id=q.get("actor_id"), task_id=q.get("task_id"),
                                             pid=pid, suffix=q.get("suffix", "out"))
            node_id, filename, task_id = found["node_id"], found["filename"], found["task_id"]
        log = await ray_state.read_log(call, node_id, filename, lines=lines, task_id=task_id)
    except FileNotFoundError as e:
        return web.Response(status=404, text=str(e))
    except ValueError as e:
        return web.Response(status=400, text=str(e))
    return web.Response(text=log["text"], content_type="text/plain")
