"""Ray's job REST API (`ray.dashboard.modules.job.job_head`), so that Ray's own
`JobSubmissionClient` and `ray job` CLI drive our job server: the same paths, JSON bodies and
status codes. Jobs run in the control store's job manager (runtime/jobs/manager.py)."""

from __future__ import annotations

import asyncio
import json
import os
import re
from typing import Any

from aiohttp import web

from .._core.ray_state import driver_details, job_details
from ..gcs.packages import check_name, name_of_uri
from ..runtime_env.spec import is_package_uri, resolve, validate
from ..jobs.manager import TERMINAL

routes = web.RouteTableDef()
# The Ray version whose job API this implements: Ray's client checks it before using
# newer request fields (entrypoint_resources, ...).
RAY_API_VERSION = "2.60.0"
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,200}$")
_REQUEST_FIELDS = {"entrypoint": str, "submission_id": (str, type(None)), "job_id": (str, type(None)),
                   "runtime_env": (dict, type(None)), "metadata": (dict, type(None)),
                   "entrypoint_num_cpus": (int, float, type(None)), "entrypoint_num_gpus": (int, float, type(None)),
                   "entrypoint_memory": (int, type(None)), "entrypoint_resources": (dict, type(None)),
                   "entrypoint_label_selector": (dict, type(None))}


def _answer(data: Any, status: int = 200) -> web.Response:
    return web.Response(text=json.dumps(data), status=status, content_type="application/json")


def _error(status: int, message: str) -> web.Response:
    """Ray's clients show a failed request's body as text: a sentence, in JSON for ours."""
    return web.Response(text=json.dumps({"message": message}), status=status, content_type="application/json")


@routes.get("/api/version")
async def version(request: web.Request) -> web.Response:
    return _answer({"version": "4", "ray_version": RAY_API_VERSION, "ray_commit": "orrery",
                    "session_name": os.path.basename(request.app["session_dir"])})


def _package_name(request: web.Request) -> str:
    """The control store's package name for Ray's `/api/packages/<protocol>/<name>`."""
    if request.match_info["protocol"] != "gcs":
        raise ValueError(f"Packages are kept by this cluster (protocol 'gcs'), not {request.match_info['protocol']!r}.")
    return check_name(request.match_info["name"])


@routes.get("/api/packages/{protocol}/{name}")
async def package_exists(request: web.Request) -> web.Response:
    """Ray's client asks before uploading. The packages live in the control store's package
    store (runtime/gcs/packages.py), the same one drivers upload to: one store."""
    try:
        name = _package_name(request)
    except ValueError as e:
        return _error(400, str(e))
    reply, _ = await request.app["gcs"].call({"op": "package_exists", "name": name})
    if not reply["exists"]:
        return _error(404, f"Package gcs://{name} does not exist")
    return web.Response()


@routes.put("/api/packages/{protocol}/{name}")
async def upload_package(request: web.Request) -> web.Response:
    try:
        name = _package_name(request)
    except ValueError as e:
        return _error(400, str(e))
    data = await request.read()
    await request.app["gcs"].call({"op": "put_package", "name": name}, [data], timeout=300)
    return web.Response()


def _runtime_env(env: Any) -> dict:
    """A job's runtime_env as Ray's client sends it (local paths already uploaded as gcs://
    URIs; pip as a list or {"packages": [...], "pip_check": ...}), resolved as ours."""
    env = dict(env or {})
    validate(env)
    for path in [env.get("working_dir")] + list(env.get("py_modules") or []):
        if path is not None and not is_package_uri(path):
            raise ValueError(f"runtime_env names the local path {path!r}; over HTTP the client uploads it first "
                             "(PUT /api/packages/gcs/<name>) and sends its gcs:// URI, as Ray's "
                             "JobSubmissionClient does.")
    return resolve(env, lambda name, data: None, 0)


def _submit_message(app: web.Application, body: Any) -> dict:
    """Our job server's submit_job from Ray's JobSubmitRequest; ValueError says what is wrong."""
    if not isinstance(body, dict):
        raise ValueError("The request body must be a JSON object (Ray's JobSubmitRequest).")
    unknown = set(body) - set(_REQUEST_FIELDS)
    if unknown:
        raise ValueError(f"Unknown field(s) {sorted(unknown)} in the job request; known: {sorted(_REQUEST_FIELDS)}.")
    for field, types in _REQUEST_FIELDS.items():
        if field in body and not isinstance(body[field], types):
            raise ValueError(f"Field {field!r} has the wrong type ({type(body[field]).__name__}).")
    if not body.get("entrypoint", "").strip():
        raise ValueError("The job request needs an entrypoint, the shell command to run.")
    return {"op": "submit_job", "entrypoint": body["entrypoint"],
            "submission_id": body.get("submission_id") or body.get("job_id"), "metadata": body.get("metadata") or {},
            "files": [], "runtime_env": _runtime_env(body.get("runtime_env")),
            **{k: body[k] for k in ("entrypoint_num_cpus", "entrypoint_num_gpus", "entrypoint_memory",
                                    "entrypoint_resources") if body.get(k) is not None}}


async def _job(request: web.Request, op: str, **extra: Any) -> tuple[dict, list] | web.Response:
    """Ask the control store about one job; a 404 in Ray's words if it has none by that id."""
    job_id = request.match_info["job_id"]
    if not _SAFE_NAME.match(job_id):
        return _error(400, f"{job_id!r} is not a job id.")
    try:
        return await request.app["gcs"].call({"op": op, "job_id": job_id, **extra})
    except ValueError as e:
        if str(e).startswith("No job"):
            return _error(404, f"Job {job_id} does not exist")
        return _error(400, str(e))


@routes.post("/api/jobs/")
async def submit(request: web.Request) -> web.Response:
    try:
        body = await request.json()
    except ValueError:
        return _error(400, "The request body is not JSON; send Ray's JobSubmitRequest, like "
                           '{"entrypoint": "python script.py"}.')
    try:
        msg = _submit_message(request.app, body)
        renv = msg["runtime_env"]
        for uri in [renv.get("working_dir")] + list(renv.get("py_modules") or []):
            if uri and not (await request.app["gcs"].call({"op": "package_exists", "name": name_of_uri(uri)}))[0]["exists"]:
                raise ValueError(f"runtime_env names {uri!r}, which is not an uploaded package; the job client "
                                 "uploads a local directory first (PUT /api/packages/gcs/<name>).")
        reply, _ = await request.app["gcs"].call(msg)
    except ValueError as e:
        return _error(400, str(e))
    return _answer({"job_id": reply["job_id"], "submission_id": reply["job_id"]})


@routes.get("/api/jobs/")
async def list_jobs(request: web.Request) -> web.Response:
    reply, _ = await request.app["gcs"].call({"op": "list_jobs"})
    rows = [job_details(j) if j.get("type") != "DRIVER" else driver_details(j) for j in reply["jobs"]]
    return _answer(rows)


@routes.get("/api/jobs/{job_id}")
async def job_info(request: web.Request) -> web.Response:
    got = await _job(request, "job_status")
    return got if isinstance(got, web.Response) else _answer(job_details(got[0]))


@routes.get("/api/jobs/{job_id}/logs")
async def job_logs(request: web.Request) -> web.Response:
    text, offset = [], 0
    while True:  # the manager answers 4 MiB at a time
        got = await _job(request, "job_logs", offset=offset)
        if isinstance(got, web.Response):
            return got
        (reply, bufs) = got
        data = bytes(bufs[0]) if bufs else b""
        text.append(data.decode(errors="replace"))
        if not data:
            return _answer({"logs": "".join(text)})
        offset = reply["offset"]


@routes.get("/api/jobs/{job_id}/logs/tail")
async def tail_logs(request: web.Request) -> web.StreamResponse:
    """A websocket of the job's output, as it is written, closed once the job has ended and
    everything was sent (Ray's `tail_job_logs`, `ray job submit`, `ray job logs --follow`)."""
    got = await _job(request, "job_logs", offset=0)
    if isinstance(got, web.Response):
        return got
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    offset = 0
    while not ws.closed:
        got = await _job(request, "job_logs", offset=offset)
        if isinstance(got, web.Response):
            break
        reply, bufs = got
        data = bytes(bufs[0]) if bufs else b""
        if data:
            await ws.send_str(data.decode(errors="replace"))
            offset = reply["offset"]
        elif reply["status"] in TERMINAL:
            break
        else:
            await asyncio.sleep(0.1)  # the log file's growth is polled
    await ws.close()
    return ws


@routes.post("/api/jobs/{job_id}/stop")
async def stop(request: web.Request) -> web.Response:
    got = await _job(request, "stop_job")
    return got if isinstance(got, web.Response) else _answer({"stopped": bool(got[0]["stopped"])})


@routes.delete("/api/jobs/{job_id}")
async def delete(request: web.Request) -> web.Response:
    got = await _job(request, "delete_job")
    return got if isinstance(got, web.Response) else _answer({"deleted": bool(got[0]["deleted"])})
