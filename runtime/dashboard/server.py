"""The dashboard process: an aiohttp application on the socket the launcher bound."""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import logging
import os
import signal
import socket
import sys
from typing import Any

from aiohttp import web

from .. import owner_pipe
from .._core.ray_state import ControlStoreClient
from ..rpc import tls
from . import jobs_api, metrics_api, state_api, ui

logger = logging.getLogger("runtime.dashboard")
MAX_BODY = 512 * 2**20  # the largest request body (a working_dir package): past it, 413


def token_guard(token: str) -> Any:
    """For a dashboard bound beyond loopback: every request carries the cluster's token
    (`Authorization: Bearer TOKEN`), or is answered 401 with what to do. Compared in constant
    time. On loopback the machine's users are trusted, as Ray's dashboard trusts everyone."""
    expected = f"Bearer {token}".encode()

    @web.middleware
    async def guard(request: web.Request, handler: Any) -> web.StreamResponse:
        given = request.headers.get("Authorization", "").encode()
        if not hmac.compare_digest(given, expected):
            why = "no Authorization header" if not given else "a wrong token"
            return web.json_response({"message": f"This dashboard needs the cluster's token ({why} was sent): send "
                                      "'Authorization: Bearer <token>', e.g. JobSubmissionClient(address, headers="
                                      "{'Authorization': 'Bearer ' + token}), or set RUNTIME_CLUSTER_TOKEN for our "
                                      "client and CLI. The token is in the session directory's `token` file."},
                                     status=401, headers={"WWW-Authenticate": "Bearer"})
        return await handler(request)
    return guard


def dashboard_auth_forced() -> bool:
    return os.environ.get("RUNTIME_DASHBOARD_AUTH", os.environ.get("RAY_DASHBOARD_AUTH", "")).lower() in ("1", "true")


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def make_app(session_dir: str, gcs: ControlStoreClient, token: str | None = None) -> web.Application:
    """`token`: require it on every request (a dashboard reachable from other machines)."""
    app = web.Application(client_max_size=MAX_BODY, middlewares=[token_guard(token)] if token else [])
    app["session_dir"], app["gcs"] = session_dir, gcs
    app.add_routes(jobs_api.routes)
    app.add_routes(metrics_api.routes)
    app.add_routes(state_api.routes)
    app.add_routes(ui.routes)
    return app


async def serve(args: dict) -> None:
    with open(args["token_file"]) as f:
        token = f.read().strip()
    sock = socket.socket(fileno=args["fd"])
    # Beyond loopback always; on loopback too when asked (RUNTIME_DASHBOARD_AUTH=1): other users
    # of this machine then cannot submit jobs (run code) as the cluster's user.
    guarded = not is_loopback(sock.getsockname()[0]) or dashboard_auth_forced()
    app = make_app(args["session_dir"], ControlStoreClient(args["gcs_address"], token), token if guarded else None)
    # An idle connection (no request yet, or headers sent slowly) is closed after hello_timeout_s.
    runner = web.AppRunner(app, access_log=None, keepalive_timeout=args.get("hello_timeout_s", 10.0))
    await runner.setup()
    await web.SockSite(runner, sock, ssl_context=tls.server_context()).start()  # HTTPS under TLS
    logger.info("dashboard serving on %s", sock.getsockname())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    owner_pipe.watch(loop, args.get("owner_fd"), stop.set)  # the control store is gone: so are we
    await stop.wait()
    await runner.cleanup()


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s dashboard %(name)s: %(message)s")
    asyncio.run(serve(json.loads(sys.argv[1])))

