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


@routes.get("/api/v0/{resource}")
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
