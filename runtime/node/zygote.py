"""A pre-forked worker factory: one warm process that has already imported the worker
code (and numpy, if installed), and forks a fresh worker per request in about a
millisecond instead of starting a new interpreter.

Workers are double-forked so that they are re-parented to the node manager, which
sets itself as a child subreaper and so can reap them and kill them by pid.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket

PR_SET_CHILD_SUBREAPER = 36
PR_SET_PDEATHSIG = 1


def become_subreaper() -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def die_with_parent() -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def start_zygote(worker_args: dict) -> tuple[int, socket.socket]:
    """Fork the zygote. Call before the node manager starts any thread or event loop."""
    parent, child = socket.socketpair()
    pid = os.fork()
    if pid == 0:
        parent.close()
        code = 0
        try:
            _zygote_main(child, worker_args)
        except BaseException:  # noqa: BLE001 - the zygote must never return into the parent's code
            code = 1
        os._exit(code)
    child.close()
    return pid, parent


def _zygote_main(sock: socket.socket, worker_args: dict) -> None:
    die_with_parent()
    for fd in worker_args.pop("_close_fds", ()):
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    from ..worker import main as worker_main  # warm imports shared by every worker
    f = sock.makefile("rb")
    for line in f:
        req = json.loads(line)
        pid = os.fork()
        if pid == 0:
            if os.fork() != 0:
                os._exit(0)  # the middle process exits; the worker is re-parented to the node manager
            try:
                f.close()
                sock.close()
                signal.signal(signal.SIGINT, signal.default_int_handler)
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                os.environ.update(req.get("env") or {})
                worker_main.run_worker({**worker_args, "worker_id": req["worker_id"]})
            finally:
                os._exit(0)
        os.waitpid(pid, 0)
    # EOF: the node manager is gone.


def request_worker(sock: socket.socket, worker_id: str, env: dict[str, str]) -> None:
    sock.sendall(json.dumps({"worker_id": worker_id, "env": env}).encode() + b"\n")
