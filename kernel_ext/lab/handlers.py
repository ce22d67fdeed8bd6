"""REST endpoints under /orrery/api/ (Jupyter auth required on every one).

A missing or unreachable cluster is not an HTTP error: the answer is
`{"connected": false, "reason": "..."}` with status 200, so the panel can say why.
Bad input is a 400/404 whose JSON `message` is a sentence.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from typing import Any

from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join
from tornado import web

from . import views
from ..announce import read_announcement
from .connection import ClusterConnection, NotConnected

SETTINGS_KEY = "orrery_cluster"
RUNTIME_DIR_KEY = "orrery_runtime_dir"  # Jupyter's runtime directory: kernels announce their cluster there
_HEX = re.compile(r"^[0-9a-fA-F]+$")


class _Base(APIHandler):
    @property
    def cluster(self) -> ClusterConnection:
        return self.settings[SETTINGS_KEY]

    def _kernel(self) -> dict:
        """`?kernel=ID`: the notebook in focus. Its kernel's announced cluster (announce.py) is
        the one to answer from; without one, the server's default (RUNTIME_ADDRESS or auto)."""
        kernel_id = self.get_query_argument("kernel", "").strip()
        info = read_announcement(self.settings[RUNTIME_DIR_KEY], kernel_id) if kernel_id else None
        return {"id": kernel_id, "cluster_address": (info or {}).get("gcs_address"),
                "notebook": (info or {}).get("notebook", "")}

    def _call(self, fn: Callable[..., Any], *args: Any) -> Awaitable[Any]:
        kernel = self._kernel()
        self._kernel_answer = {**kernel, "followed": bool(kernel["cluster_address"])}
        return self.cluster.call(fn, *args, target=kernel["cluster_address"])

    def _limit(self) -> int:
        raw = self.get_query_argument("limit", str(views.DEFAULT_LIMIT))
        try:
            limit = int(raw)
        except ValueError:
            raise web.HTTPError(400, f"limit must be a positive integer, got {raw!r}.") from None
        if limit <= 0:
            raise web.HTTPError(400, f"limit must be a positive integer, got {raw!r}.")
        return limit

    async def _answer(self, key: str, produce: Callable[[], Awaitable[Any]]) -> None:
        try:
            value = await produce()
        except NotConnected as e:
            self.finish(json.dumps({"connected": False, "reason": str(e),
                                    "kernel": getattr(self, "_kernel_answer", None)}))
            return
        body = {"connected": True, "address": self.cluster.address,
                "kernel": getattr(self, "_kernel_answer", None)}
        if isinstance(value, dict) and key == "":
            body.update(value)
        else:
            body[key] = value
        self.finish(json.dumps(body, default=views.jsonable))


class ClustersHandler(_Base):
    @web.authenticated
    async def get(self) -> None:
        await self._answer("", lambda: self._call(views.cluster_summary, self.cluster.address))


class NodesHandler(_Base):
    @web.authenticated
    async def get(self) -> None:
        await self._answer("nodes", lambda: self._call(views.nodes))


class TasksHandler(_Base):
    @web.authenticated
    async def get(self) -> None:
        cell = self.get_query_argument("cell", "").strip() or None
        limit = self._limit()
        notebook = self._kernel()["notebook"]
        await self._answer("tasks", lambda: self._call(views.tasks, cell, limit, notebook))


class CancelTaskHandler(_Base):
    @web.authenticated
    async def post(self, task_id: str) -> None:
        if not _HEX.match(task_id):
            raise web.HTTPError(400, f"Task id {task_id!r} is not a hex task id "
                                     "(see the task_id column of /orrery/api/tasks).")
        force = self._force()
        try:
            cancelled, task_state = await self._call(views.cancel_task, task_id, force)
        except NotConnected as e:
            self.finish(json.dumps({"connected": False, "reason": str(e)}))
            return
        except views.UnknownTask as e:
            raise web.HTTPError(404, str(e)) from None
        except ValueError as e:  # e.g. force=True on an actor task
            raise web.HTTPError(400, str(e)) from None
        if not cancelled:
            raise web.HTTPError(409, f"Task {task_id} was not cancelled: it is no longer running "
                                     f"(last listed state {task_state}).")
        self.finish(json.dumps({"connected": True, "task_id": task_id, "cancelled": True, "force": force}))

    def _force(self) -> bool:
        raw = self.request.body.strip()
        if not raw:
            return False
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise web.HTTPError(400, 'The request body is not JSON; send {"force": false} or nothing.') from None
        if not isinstance(body, dict):
            raise web.HTTPError(400, 'The request body must be a JSON object like {"force": false}.')
        force = body.get("force", False)
        if not isinstance(force, bool):
            raise web.HTTPError(400, f'"force" must be true or false, got {force!r}.')
        return force


class ActorsHandler(_Base):
    @web.authenticated
    async def get(self) -> None:
        limit = self._limit()
        await self._answer("actors", lambda: self._call(views.actors, limit))


class PlacementGroupsHandler(_Base):
    @web.authenticated
    async def get(self) -> None:
        await self._answer("placement_groups", lambda: self._call(views.placement_groups))


class ObjectsHandler(_Base):
    @web.authenticated
    async def get(self) -> None:
        limit = self._limit()
        await self._answer("objects", lambda: self._call(views.objects, limit))


class MetricsHandler(_Base):
    @web.authenticated
    async def get(self) -> None:
        await self._answer("", lambda: self._call(views.metrics))


ROUTES = [
    ("clusters", ClustersHandler),
    ("nodes", NodesHandler),
    ("tasks", TasksHandler),
    (r"tasks/(?P<task_id>[^/]+)/cancel", CancelTaskHandler),
    ("actors", ActorsHandler),
    ("placement_groups", PlacementGroupsHandler),
    ("objects", ObjectsHandler),
    ("metrics", MetricsHandler),
]


def setup_handlers(serverapp: Any) -> None:
    web_app = serverapp.web_app
    web_app.settings[SETTINGS_KEY] = ClusterConnection()
    web_app.settings[RUNTIME_DIR_KEY] = serverapp.runtime_dir
    base = url_path_join(web_app.settings["base_url"], "orrery", "api")
    web_app.add_handlers(".*$", [(url_path_join(base, path) + "/?$", handler) for path, handler in ROUTES])
    from .dashboard_proxy import routes as dashboard_routes
    web_app.add_handlers(".*$", dashboard_routes(web_app.settings["base_url"]))
