"""The proxy: one process per thin client, on the head, that is a driver of the cluster for it.

Started by the client server (`server.py`) with the client's accepted socket. It joins the
cluster with the public API (`runtime.init(address=...)`) and replays each forwarded call
on it, so every object and actor the client makes is owned here and lives exactly as long as
the client holds it (or the connection lasts). Calls are replayed in the order they came:
a single thread submits tasks, actor calls and puts, so one caller's actor calls keep their
order; `get`, `wait` and control-store requests then wait on a pool of threads, so a long
`get` does not hold up later submissions.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import cloudpickle

from ..rpc import tls
from ..rpc.connection import DEFERRED, Connection
from ..rpc.framing import FrameError
from .protocol import pack, pack_error, unpack

logger = logging.getLogger("runtime.client.proxy")


class ClientSession:
    def __init__(self, gcs_address: str) -> None:
        self.gcs_address = gcs_address
        self.conn: Connection | None = None
        # Each ObjectRef sent to the client, kept alive with the number of times it was sent;
        # the client's `release` says how many of those it accounts for.
        self.held: dict[bytes, list] = {}
        self.lock = threading.Lock()
        self.functions: dict[bytes, Any] = {}  # fid -> RemoteFunction
        self.classes: dict[bytes, Any] = {}  # class id -> ActorClass
        self.handles: dict[str, Any] = {}  # actor id -> handle (this process must not drop it first)
        self.failed: dict[bytes, BaseException] = {}  # return id of a submission that raised here
        self.serial = ThreadPoolExecutor(1, thread_name_prefix="client-submit")
        self.blocking = ThreadPoolExecutor(32, thread_name_prefix="client-wait")

    def handlers(self) -> dict[str, Callable]:
        ordered = {"init": self.init, "task": self.task, "create_actor": self.create_actor,
                   "actor_call": self.actor_call, "put": self.put, "cancel": self.cancel, "release": self.release,
                   "actor_gone": self.actor_gone, "pg_ready": self.pg_ready, "flush_events": self.flush_events}
        waiting = {"get": self.get, "wait": self.wait, "gcs": self.gcs}
        out = {op: self._ordered(fn) for op, fn in ordered.items()}
        out.update({op: self._ordered(fn, then_wait=True) for op, fn in waiting.items()})
        return out

    # -- dispatch ------------------------------------------------------------------------------
    def _ordered(self, fn: Callable, then_wait: bool = False) -> Callable:
        """Run `fn(msg, bufs)` on the submitting thread, in arrival order. With then_wait, `fn`
        returns a callable that the pool runs (after everything sent before it was submitted)."""
        def handler(conn: Connection, msg: dict, bufs: list) -> Any:
            call_id = msg.get("id")  # (bufs are views of this frame's own bytes: safe to keep)

            def run() -> None:
                try:
                    result = fn(msg, bufs)
                    if then_wait:
                        self.blocking.submit(self._answer, conn, call_id, result)
                        return
                except BaseException as e:  # noqa: BLE001 - goes back to the caller
                    result = pack_error(e)
                    if call_id is None:
                        logger.warning("client %s failed: %s", msg["op"], e)
                if call_id is not None:
                    _reply(conn, call_id, result)

            self.serial.submit(run)
            return DEFERRED
        return handler

    @staticmethod
    def _answer(conn: Connection, call_id: int | None, work: Callable) -> None:
        try:
            result = work()
        except BaseException as e:  # noqa: BLE001
            result = pack_error(e)
        if call_id is not None:
            _reply(conn, call_id, result)

    # -- refs ------------------------------------------------------------------------------------
    def _send_ref(self, ref: Any) -> list:
        with self.lock:
            entry = self.held.setdefault(ref._id, [ref, 0])
            entry[1] += 1
        return [ref._id, ref._owner]

    def _value_reply(self, value: Any) -> tuple[dict, list]:
        bufs, nested = pack(value)
        return {"nested": [self._send_ref(r) for r in nested]}, bufs

    def _refs(self, pairs: list) -> list:
        from .._core.object_ref import ObjectRef
        for oid, _owner in pairs:
            if oid in self.failed:
                raise self.failed[oid]
        return [ObjectRef(oid, owner) for oid, owner in pairs]

    def release(self, msg: dict, bufs: list) -> None:
        with self.lock:
            for oid, count in msg["refs"]:
                entry = self.held.get(oid)
                if entry is not None:
                    entry[1] -= count
                    if entry[1] <= 0:
                        del self.held[oid]
                self.failed.pop(oid, None)

    # -- calls -----------------------------------------------------------------------------------
    def init(self, msg: dict, bufs: list) -> dict:
        import runtime
        from .._core import worker_state
        ctx = runtime.init(address=self.gcs_address, namespace=msg.get("namespace"),
                           runtime_env=msg.get("runtime_env"))
        cw = worker_state.current()
        conn = self.conn

        def forward_output(out: dict) -> bool:
            conn.send_threadsafe({"op": "task_output", "m": out})
            return True

        cw.output_handler = forward_output
        logging.getLogger("runtime").addHandler(_ForwardWarnings(conn))
        return {"job_id": cw.job_id, "node_id": cw.node_id, "namespace": cw.namespace, "owner": cw.address,
                "worker_id": cw.worker_id, "gcs_address": cw.gcs_address,
                "session_dir": ctx.address_info["session_dir"]}

    def _cell(self, msg: dict) -> None:
        from .._core import worker_state
        worker_state.current().current_cell = msg.get("cell")

    def task(self, msg: dict, bufs: list) -> None:
        from .._core.ids import TaskID
        from .._core.remote_function import RemoteFunction
        fid = msg["fid"]
        try:  # a function or an argument that cannot be unpickled here fails the task's results
            if msg.get("blob"):
                self.functions[fid] = RemoteFunction(cloudpickle.loads(bufs[0]), {})
                bufs = bufs[1:]
            args, kwargs, options = unpack(bufs)
            self._cell(msg)
            refs = self.functions[fid]._submit(args, kwargs, options, task_id=TaskID(msg["task_id"]))
        except BaseException as e:  # noqa: BLE001 - the client's refs raise it on get
            self._fail(msg["task_id"], msg["num_returns"], e)
            return
        self._hold_returns(refs)

    def _hold_returns(self, refs: Any) -> None:
        for ref in refs if isinstance(refs, list) else [refs] if refs is not None else []:
            self._send_ref(ref)

    def _fail(self, task_id: bytes, num_returns: int, exc: BaseException) -> None:
        from .._core.task_spec import return_ids
        for oid in return_ids(task_id, num_returns):
            self.failed[oid] = exc

    def create_actor(self, msg: dict, bufs: list) -> dict:
        from .._core.actor import ActorClass
        cid = msg["cid"]
        if msg.get("blob"):
            self.classes[cid] = ActorClass(cloudpickle.loads(bufs[0]), {})
            bufs = bufs[1:]
        args, kwargs, options = unpack(bufs)
        ac = self.classes[cid]
        self._cell(msg)
        handle = ac._create(args, kwargs, options)
        owned, handle._owned = handle._owned, False  # the client's handle decides when it goes
        self.handles[handle._actor_id] = handle
        return {"actor_id": handle._actor_id, "meta": handle._meta, "owned": owned}

    def actor_call(self, msg: dict, bufs: list) -> None:
        from .._core.actor import ActorMethod, _rebuild_handle
        aid = msg["actor_id"]
        try:
            args, kwargs = unpack(bufs)
            handle = self.handles.get(aid) or self.handles.setdefault(aid, _rebuild_handle(aid, msg["meta"]))
            self._cell(msg)
            refs = ActorMethod(handle, msg["method"], msg["num_returns"])._submit(
                args, kwargs, msg["num_returns"], task_id=msg["task_id"])
        except BaseException as e:  # noqa: BLE001
            self._fail(msg["task_id"], msg["num_returns"], e)
            return
        self._hold_returns(refs)

    def actor_gone(self, msg: dict, bufs: list) -> None:
        from .._core import worker_state
        if self.handles.pop(msg["actor_id"], None) is not None:
            worker_state.current().handle_out_of_scope(msg["actor_id"])

    def put(self, msg: dict, bufs: list) -> dict:
        import runtime
        self._cell(msg)
        return {"ref": self._send_ref(runtime.put(unpack(bufs)))}

    def cancel(self, msg: dict, bufs: list) -> dict:
        import runtime
        runtime.cancel(self._refs([msg["ref"]])[0], force=msg["force"], recursive=msg["recursive"])
        return {}

    def pg_ready(self, msg: dict, bufs: list) -> dict:
        from .._core import worker_state
        return {"ref": self._send_ref(worker_state.current().placement_group_ready(unpack(bufs)))}

    def flush_events(self, msg: dict, bufs: list) -> dict:
        from .._core import worker_state
        cw = worker_state.current()
        cw.run_sync(cw.flush_task_events())
        return {}

    def get(self, msg: dict, bufs: list) -> Callable:
        import runtime
        refs = self._refs(msg["refs"])
        return lambda: self._value_reply(runtime.get(refs, timeout=msg.get("timeout")))

    def wait(self, msg: dict, bufs: list) -> Callable:
        import runtime
        refs = self._refs(msg["refs"])

        def work() -> dict:
            ready, _ = runtime.wait(refs, num_returns=msg["num_returns"], timeout=msg.get("timeout"))
            ready_ids = {r._id for r in ready}
            return {"ready": [i for i, r in enumerate(refs) if r._id in ready_ids]}
        return work

    def gcs(self, msg: dict, bufs: list) -> Callable:
        from .._core import worker_state
        cw = worker_state.current()

        def work() -> tuple[dict, list]:
            reply, rbufs = cw.run_sync(cw.gcs_request(msg["msg"], bufs, timeout=msg.get("timeout")))
            return {"reply": reply}, [bytes(b) for b in rbufs]
        return work

    def close(self) -> None:
        self.serial.shutdown(wait=False, cancel_futures=True)
        self.blocking.shutdown(wait=False, cancel_futures=True)
        import runtime
        runtime.shutdown()


def _reply(conn: Connection, call_id: int, result: Any) -> None:
    try:
        conn.reply_threadsafe(call_id, result)
    except FrameError as e:  # a value too big for one frame: say so rather than leave the caller waiting
        conn.reply_threadsafe(call_id, pack_error(ValueError(
            f"The value is too big to send to a thin client in one message ({e}). Keep it in the cluster: "
            "pass its ObjectRef to tasks, or get a part of it.")))


class _ForwardWarnings(logging.Handler):
    """The runtime's warnings in this process (a task no node can run, say) go to the client."""

    def __init__(self, conn: Connection) -> None:
        super().__init__(logging.WARNING)
        self.conn = conn

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith("runtime.client"):
            return
        try:
            self.conn.send_threadsafe({"op": "warning", "text": record.getMessage()})
        except Exception:  # noqa: BLE001 - the client is gone
            pass


def _die_with_parent() -> None:
    """Linux: SIGTERM when the control store that started us dies, even by SIGKILL."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - elsewhere the client's disconnect still ends us
        pass


async def _serve(args: dict) -> None:
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, done.set)
    session = ClientSession(args["gcs_address"])
    sock = socket.socket(fileno=args["fd"])
    handlers = session.handlers()
    ready_fd = args.get("ready_fd")
    if ready_fd is not None:  # the client server counts proxies whose client has not said hello yet
        handlers["hello"] = lambda _c, _m, _b: os.close(ready_fd)
    conn = Connection(handlers, args["token"], server_side=True, on_close=lambda _c: done.set(),
                      name=f"client {args.get('peer', '')}", hello_timeout=args.get("hello_timeout_s"))
    session.conn = conn
    ctx = tls.server_context()  # this process does the handshake: the client server only accepted
    await loop.connect_accepted_socket(lambda: conn, sock, ssl=ctx,
                                       ssl_handshake_timeout=tls.HANDSHAKE_TIMEOUT_S if ctx else None)
    await done.wait()
    await asyncio.get_running_loop().run_in_executor(None, session.close)


def main() -> None:
    _die_with_parent()
    args = json.loads(sys.argv[1])
    with open(args.pop("token_file")) as f:
        args["token"] = f.read().strip()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s client-proxy %(name)s: %(message)s")
    logger.info("serving client %s", args.get("peer"))
    asyncio.run(_serve(args))
    os._exit(0)


if __name__ == "__main__":
    main()
