"""The web UI: static files in runtime/dashboard/static (shipped in the wheel; plain JavaScript,
nothing to build), and the one JSON answer the page needs that Ray's APIs do not give: each
node's resources, object store and memory in use, with the cluster's counts."""

from __future__ import annotations

import os
from collections import Counter

from aiohttp import web

STATIC = os.path.join(os.path.dirname(__file__), "static")
routes = web.RouteTableDef()


@routes.get("/")
async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(os.path.join(STATIC, "index.html"), headers={"Cache-Control": "no-cache"})


@routes.get("/api/orrery/overview")
async def overview(request: web.Request) -> web.Response:
    call = request.app["gcs"].call
    nodes, _ = await call({"op": "list_nodes"})
    usage, _ = await call({"op": "cluster_resources"})
    counts, _ = await call({"op": "cluster_metrics"})
    live = usage["nodes"]
    out = []
    for n in nodes["nodes"]:
        u = live.get(n["node_id"]) or {}
        out.append({"node_id": n["node_id"], "node_ip": n["node_ip"], "is_head": n["is_head"],
                    "state": "ALIVE" if n["alive"] else "DEAD", "resources_total": u.get("total") or n["resources"],
                    "resources_available": u.get("available"), "store": u.get("store"), "workers": u.get("workers"),
                    "memory_used": u.get("memory_used"), "memory_total": u.get("memory_total")})
    tasks: Counter = Counter()
    for state, _name, n in counts["tasks"]:
        tasks[state] += n
    return web.json_response({
        "session_name": os.path.basename(request.app["session_dir"]), "nodes": out, "tasks_by_state": dict(tasks),
        "actors_alive": sum(n for state, _name, n in counts["actors"] if state == "ALIVE"),
        "jobs_running": sum(n for state, n in counts["jobs"] if state == "RUNNING")})


routes.static("/static", STATIC)
