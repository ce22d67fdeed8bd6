"""Worker process entry point (forked by the node's zygote)."""

from __future__ import annotations

import logging
import os
import sys

from ..config import SystemConfig
from .._core import api_state, worker_state
from .._core.core_worker import CoreWorker
from .._core.private_files import make_private_dir
from . import output
from .executor import Executor


def run_worker(args: dict, runtime_env: dict | None = None) -> None:
    """`runtime_env`: the resolved environment this worker was started in; the tasks and actors
    it submits inherit it, as in Ray."""
    if os.environ.get("RUNTIME_TESTING_WORKER_EXIT_AT_START"):  # fault injection for the tests (runtime_env env_vars)
        _exit_at_start(os.environ["RUNTIME_TESTING_WORKER_EXIT_AT_START"])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s worker: %(message)s")
    log_dir = make_private_dir(os.path.join(args["session_dir"], "logs"))
    config = SystemConfig.from_json(args["system_config"])
    cw = CoreWorker(mode="worker", worker_id=args["worker_id"], token=args["token"],
                    session_dir=args["session_dir"], node_address=args["node_address"],
                    gcs_address=args["gcs_address"], config=config, sock_dir=args["sock_dir"],
                    node_ip=args["node_ip"])
    worker_state.set_current(cw)
    api_state.job_runtime_env = runtime_env or None
    executor = Executor(cw)
    cw.handlers.update(executor.handlers())
    cw.start_loop_thread()
    cw.run_sync(cw.connect_cluster("worker"), timeout=config.startup_timeout_s)
    sys.stdout.flush()
    output.install(os.path.join(log_dir, f"worker-{args['worker_id']}"))
    if args.get("user_umask") is not None:
        # The node manager's umask (077) made this worker's own files private; what the user's
        # tasks write follows the user's umask, as in the driver.
        os.umask(args["user_umask"])
    executor.run_forever()


def _exit_at_start(how: str) -> None:
    """"always": exit before registering; a path: exit once (the first worker creates the file)."""
    if how != "always":
        try:
            os.close(os.open(how, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return
    os._exit(3)
