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
import sys

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
    import gc
    gc.freeze()  # the collector never walks (so never writes to) the inherited objects: their pages stay shared
    f = sock.makefile("rb")
    for line in f:
        req = json.loads(line)
        pid = os.fork()
        if pid == 0:
            worker_pid = os.fork()
            if worker_pid != 0:
                # The node manager learns the pid now, so a worker that dies before it registers
                # is noticed. Middle processes run one at a time (waitpid below): lines never mix.
                sock.sendall(json.dumps({"worker_id": req["worker_id"], "pid": worker_pid}).encode() + b"\n")
                os._exit(0)  # the middle process exits; the worker is re-parented to the node manager
            try:
                f.close()
                sock.close()
                signal.signal(signal.SIGINT, signal.default_int_handler)
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                ctx = req.get("ctx") or {}
                args = {**worker_args, "worker_id": req["worker_id"]}
                enter_runtime_env(ctx)
                if set(ctx.get("shadows") or ()) & set(sys.modules):
                    # The pip layer brings its own version of a module this process has already
                    # imported: only a fresh interpreter can load the layer's.
                    # Its arguments (the token among them) go through a pipe: argv is public in `ps`.
                    r, w = os.pipe()
                    os.write(w, json.dumps(args).encode())  # far below a pipe's buffer
                    os.close(w)
                    os.set_inheritable(r, True)
                    os.execv(sys.executable, [sys.executable, "-c", _FRESH_WORKER, str(r)])
                worker_main.run_worker(args, ctx.get("runtime_env") or {})
            finally:
                os._exit(0)
        os.waitpid(pid, 0)
    # EOF: the node manager is gone.


_FRESH_WORKER = ("import json, os, sys; from runtime.worker import main; "
                 "args = json.loads(os.fdopen(int(sys.argv[1]), 'rb').read()); "
                 "main.run_worker(args, json.loads(os.environ.get('RUNTIME_WORKER_RUNTIME_ENV', '{}')))")


def enter_runtime_env(ctx: dict) -> None:
    """Make this process the runtime_env's (runtime/node/runtime_env_agent.py made `ctx`): its
    env_vars, its working_dir as cwd, the working_dir, py_modules and pip layer first on
    sys.path and PYTHONPATH (so a `python` the task starts sees them too), the layer's scripts
    first on PATH."""
    os.environ.update(ctx.get("env_vars") or {})
    paths = list(ctx.get("paths") or ())
    if paths:
        import site
        before = list(sys.path)
        for p in paths:
            site.addsitedir(p)  # runs a pip layer's .pth files
        added = [p for p in sys.path if p not in before]
        sys.path[:] = paths + [p for p in added if p not in paths] + before
        os.environ["PYTHONPATH"] = os.pathsep.join(paths + [p for p in os.environ.get("PYTHONPATH", "").split(
            os.pathsep) if p])
    if ctx.get("bin"):
        os.environ["PATH"] = os.pathsep.join(list(ctx["bin"]) + [os.environ.get("PATH", "")])
    if ctx.get("cwd"):
        os.chdir(ctx["cwd"])
    if ctx.get("runtime_env"):
        os.environ["RUNTIME_WORKER_RUNTIME_ENV"] = json.dumps(ctx["runtime_env"])


def request_worker(sock: socket.socket, worker_id: str, ctx: dict) -> None:
    """`ctx`: the runtime_env the worker enters (see enter_runtime_env)."""
    sock.sendall(json.dumps({"worker_id": worker_id, "ctx": ctx}).encode() + b"\n")
