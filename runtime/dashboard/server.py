"""The dashboard process: an aiohttp application on the socket the launcher bound."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import socket
import sys

from aiohttp import web

from .. import owner_pipe
from .._core.ray_state import ControlStoreClient
from . import jobs_api, metrics_api, state_api

logger = logging.getLogger("runtime.dashboard")
MAX_BODY = 512 * 2**20  # the largest request body (a working_dir package): past it, 413


def make_app(session_dir: str, gcs: ControlStoreClient) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY)
    app["session_dir"], app["gcs"] = session_dir, gcs
    app.add_routes(jobs_api.routes)
    app.add_routes(metrics_api.routes)
    app.add_routes(state_api.routes)
    return app


async def serve(args: dict) -> None:
    with open(args["token_file"]) as f:
        token = f.read().strip()
    app = make_app(args["session_dir"], ControlStoreClient(args["gcs_address"], token))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    sock = socket.socket(fileno=args["fd"])
    await web.SockSite(runner, sock).start()
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

