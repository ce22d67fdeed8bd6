"""The thin client's stand-in for the core worker: the public API calls it as it would call a
`CoreWorker`, and it forwards each call to the proxy on the head over one connection.

Submissions (`f.remote()`, `actor.m.remote()`) do not wait for the proxy: the client picks the
task id, so it knows the result ids at once, and the proxy replays the calls in order. A call
that fails in the proxy (say, its function cannot be unpickled there) fails its results, which
`get` then raises. Everything that returns something (`get`, `put`, `wait`, actor creation,
control-store requests) is a request on the same connection.

Reference counting: each `ObjectRef` alive in this process counts here; when the last one for an
id goes, the client tells the proxy how many times it was sent that id, and the proxy drops its
copy once all of them are accounted for (a reply in flight may be sending the id again).
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import logging
import os
import sys
import threading
from concurrent.futures import Future as ConcurrentFuture
from typing import Any

from .._core.ids import TaskID
from .._core.object_ref import ObjectRef
from .._core.task_spec import return_ids
from ..config import SystemConfig
from ..rpc import tls
from ..rpc.connection import Connection, connect
from ..worker.output import LinePrefixer
from .protocol import pack, unpack

logger = logging.getLogger("runtime")


class ConnectionLost(ConnectionError):
    pass


class _RefCounts:
    """ObjectRefs alive here, per id, and how many times the proxy sent each id. Reentrant:
    a reply's nested refs are counted and unpickled under it, so a release computed meanwhile
    cannot hand back a sending the new refs still need."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.local: dict[bytes, int] = {}
        self.received: dict[bytes, int] = {}

    def add_local(self, oid: bytes, owner: str) -> None:
        with self.lock:
            self.local[oid] = self.local.get(oid, 0) + 1

    def received_one(self, oid: bytes) -> None:
        with self.lock:
            self.received[oid] = self.received.get(oid, 0) + 1

    def remove_local(self, oid: bytes) -> int:
        """Drop one ObjectRef; the sendings to release when it was the last one (else 0)."""
        with self.lock:
            left = self.local.get(oid, 0) - 1
            if left > 0:
                self.local[oid] = left
                return 0
            self.local.pop(oid, None)
            return self.received.pop(oid, 0)


class ClientWorker:
    is_client = True
    mode = "driver"

    def __init__(self, address: str, token: str, config: SystemConfig) -> None:
        self.client_address = address
        self.token = token
        self.config = config
        self.loop = asyncio.new_event_loop()
        self.thread: threading.Thread | None = None
        self.conn: Connection | None = None
        self.refs = _RefCounts()
        self.closed = False
        self.output_handler: Any = None  # as CoreWorker.output_handler (the notebook extension sets it)
        self._prefix_output = LinePrefixer()
        self._dead_refs: collections.deque = collections.deque()
        self._dead_actors: collections.deque = collections.deque()
        self._drain_scheduled = False
        self._send_lock = threading.Lock()  # code is sent once, before the first call that needs it
        self._sent_code: set[bytes] = set()
        # What the API reads off a core worker; the proxy's values once connected.
        self.job_id = self.node_id = self.namespace = self.worker_id = self.gcs_address = ""
        self.address = ""  # the proxy's address: it owns everything this client makes
        self.session_dir = self.shm_dir = ""
        self.current_cell: dict | None = None
        self.current_task_id = b""
        self.current_actor_id = ""
        self.actor_reconstructed = False
        self.current_pg = None
        self.gpu_ids: list[int] = []
        self.assigned_resources: dict = {}
        self.tasks: dict = {}

    # -- connection ------------------------------------------------------------------------------
    def start_loop_thread(self) -> None:
        self.thread = threading.Thread(target=self.loop.run_forever, name="runtime-client-io", daemon=True)
        self.thread.start()

    def run_sync(self, coro: Any, timeout: float | None = None) -> Any:
        if threading.current_thread() is self.thread:
            raise RuntimeError("blocking runtime call made on the runtime's own event loop thread")
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def connect(self, namespace: str | None, runtime_env: dict | None, timeout: float) -> None:
        handlers = {"task_output": self.on_task_output, "warning": self.on_warning}
        self.conn = await connect("tcp:" + self.client_address, handlers, self.token, timeout=timeout,
                                  on_close=self._on_close, name=f"client://{self.client_address}")
        try:
            reply, bufs = await self.conn.request({"op": "init", "namespace": namespace, "runtime_env": runtime_env},
                                                  timeout=timeout)
        except ConnectionError as e:
            raise ConnectionLost(f"the client server closed the connection at once: {e} (the token is "
                                 "RUNTIME_CLUSTER_TOKEN, the head's SESSION_DIR/token)") from None
        _raise_if_error(reply, bufs)
        for key in ("job_id", "node_id", "namespace", "worker_id", "gcs_address", "session_dir"):
            setattr(self, key, reply[key])
        self.address = reply["owner"]

    def _on_close(self, _conn: Connection) -> None:
        if not self.closed:
            logger.warning("The connection to the client server at %s was lost; objects and actors of this "
                           "session are gone. Call runtime.shutdown() and runtime.init() again.", self.client_address)

    def _lost(self) -> ConnectionLost:
        return ConnectionLost(f"Not connected to the cluster at client://{self.client_address}: the connection "
                              "was closed. Call runtime.shutdown() and runtime.init() to connect again.")

    def _request(self, msg: dict, bufs: list | tuple = ()) -> ConcurrentFuture:
        """Send a request from any thread; the future gets (reply, buffers) or the error."""
        fut: ConcurrentFuture = ConcurrentFuture()

        def answered(reply: Any, rbufs: Any, err: BaseException | None) -> None:
            if err is not None:
                fut.set_exception(self._lost())
            else:
                fut.set_result((reply, rbufs))

        if self.conn is None or not self.conn.request_cb_threadsafe(msg, bufs, answered):
            raise self._lost()
        return fut

    def _call(self, msg: dict, bufs: list | tuple = ()) -> tuple[dict, list]:
        reply, rbufs = self._request(msg, bufs).result()
        _raise_if_error(reply, rbufs)
        return reply, rbufs

    def _send(self, msg: dict, bufs: list | tuple = ()) -> None:
        if self.conn is None or self.conn.closed:
            raise self._lost()
        self.conn.send_threadsafe(msg, bufs)

    # -- objects ---------------------------------------------------------------------------------
    def _ref(self, pair: list) -> ObjectRef:
        with self.refs.lock:
            self.refs.received_one(pair[0])
            return ObjectRef(pair[0], pair[1])

    def _value(self, reply: dict, bufs: list) -> Any:
        with self.refs.lock:
            for oid, _owner in reply.get("nested", ()):
                self.refs.received_one(oid)
            return unpack(bufs)

    @staticmethod
    def _pairs(refs: list) -> list:
        return [[r._id, r._owner] for r in refs]

    def put(self, value: Any) -> ObjectRef:
        bufs, _ = pack(value)
        reply, _ = self._call({"op": "put", "cell": self.current_cell}, bufs)
        return self._ref(reply["ref"])

    def get(self, refs: list, timeout: float | None = None) -> list:
        reply, bufs = self._call({"op": "get", "refs": self._pairs(refs), "timeout": timeout})
        return self._value(reply, bufs)

    def get_future(self, ref: ObjectRef) -> ConcurrentFuture:
        fut: ConcurrentFuture = ConcurrentFuture()

        def answered(reply: Any, bufs: Any, err: BaseException | None) -> None:
            try:
                if err is not None:
                    raise self._lost()
                _raise_if_error(reply, bufs)
                fut.set_result(self._value(reply, bufs)[0])
            except BaseException as e:  # noqa: BLE001 - the future carries it
                fut.set_exception(e)

        msg = {"op": "get", "refs": self._pairs([ref]), "timeout": None}
        if self.conn is None or not self.conn.request_cb_threadsafe(msg, (), answered):
            fut.set_exception(self._lost())
        return fut

    def wait(self, refs: list, num_returns: int, timeout: float | None) -> tuple[list, list]:
        reply, _ = self._call({"op": "wait", "refs": self._pairs(refs), "num_returns": num_returns,
                               "timeout": timeout})
        ready = set(reply["ready"])
        return [r for i, r in enumerate(refs) if i in ready], [r for i, r in enumerate(refs) if i not in ready]

    def cancel(self, ref: ObjectRef, force: bool, recursive: bool) -> None:
        self._call({"op": "cancel", "ref": [ref._id, ref._owner], "force": force, "recursive": recursive})

    def placement_group_ready(self, pg: Any) -> ObjectRef:
        bufs, _ = pack(pg)
        reply, _ = self._call({"op": "pg_ready"}, bufs)
        return self._ref(reply["ref"])

    # -- tasks and actors ---------------------------------------------------------------------------
    def _with_code(self, msg: dict, code_id: bytes, blob: bytes, bufs: list) -> list:
        """Caller holds _send_lock. The code goes with the first message that uses it."""
        if code_id in self._sent_code:
            return bufs
        self._sent_code.add(code_id)
        msg["blob"] = True
        return [blob, *bufs]

    def _returns(self, task_id: bytes, num_returns: int) -> list[ObjectRef]:
        return [self._ref([oid, self.address]) for oid in return_ids(task_id, num_returns)]

    def submit_function(self, fid: bytes, blob: bytes, args: tuple, kwargs: dict, options: dict) -> list:
        bufs, _ = pack((args, kwargs, options))
        task_id = bytes(TaskID.new())
        num_returns = options.get("num_returns", 1)
        msg = {"op": "task", "fid": fid, "task_id": task_id, "num_returns": num_returns, "cell": self.current_cell}
        refs = self._returns(task_id, num_returns)
        with self._send_lock:
            self._send(msg, self._with_code(msg, fid, blob, bufs))
        return refs

    def create_actor(self, blob: bytes, args: tuple, kwargs: dict, options: dict) -> tuple[str, dict, bool]:
        bufs, _ = pack((args, kwargs, options))
        cid = hashlib.sha1(blob).digest()[:16]
        msg = {"op": "create_actor", "cid": cid, "cell": self.current_cell}
        with self._send_lock:
            fut = self._request(msg, self._with_code(msg, cid, blob, bufs))
        reply, rbufs = fut.result()
        _raise_if_error(reply, rbufs)
        return reply["actor_id"], reply["meta"], reply["owned"]

    def call_actor(self, handle: Any, method: str, args: tuple, kwargs: dict, num_returns: int) -> list:
        bufs, _ = pack((args, kwargs))
        task_id = bytes(TaskID.new())
        refs = self._returns(task_id, num_returns)
        self._send({"op": "actor_call", "actor_id": handle._actor_id, "meta": handle._meta, "method": method,
                    "num_returns": num_returns, "task_id": task_id, "cell": self.current_cell}, bufs)
        return refs

    def subscribe_actor_nowait(self, actor_id: str, max_task_retries: int) -> None:
        """The proxy follows actors; nothing to do here."""

    # -- control store -------------------------------------------------------------------------------
    async def gcs_request(self, msg: dict, bufs: list | tuple = (), timeout: float | None = None) -> tuple[dict, list]:
        if self.conn is None or self.conn.closed:
            raise self._lost()
        reply, rbufs = await self.conn.request({"op": "gcs", "msg": msg, "timeout": timeout}, bufs, timeout=None)
        _raise_if_error(reply, rbufs)
        return reply["reply"], rbufs

    async def flush_task_events(self) -> None:
        if self.conn is not None and not self.conn.closed:
            await self.conn.request({"op": "flush_events"}, timeout=None)

    # -- going out of scope (from __del__: only queue; the loop sends) ---------------------------------
    def defer_remove_local(self, oid: bytes) -> None:
        self._dead_refs.append(oid)
        self._schedule_drain()

    def handle_out_of_scope(self, actor_id: str) -> None:
        self._dead_actors.append(actor_id)
        self._schedule_drain()

    def _schedule_drain(self) -> None:
        if not self._drain_scheduled and not self.closed:
            self._drain_scheduled = True
            self.loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        self._drain_scheduled = False
        released = []
        while self._dead_refs:
            oid = self._dead_refs.popleft()
            count = self.refs.remove_local(oid)
            if count:
                released.append([oid, count])
        conn = self.conn
        if conn is None or conn.closed:
            return
        if released:
            conn.send({"op": "release", "refs": released})
        while self._dead_actors:
            conn.send({"op": "actor_gone", "actor_id": self._dead_actors.popleft()})

    # -- output -------------------------------------------------------------------------------------
    def on_task_output(self, conn: Connection, msg: dict, bufs: list) -> None:
        out = msg["m"]
        handler = self.output_handler
        if handler is not None and handler(out):
            return
        stream = sys.stdout if out["s"] == 1 else sys.stderr
        stream.write(self._prefix_output(out))
        stream.flush()

    def on_warning(self, conn: Connection, msg: dict, bufs: list) -> None:
        logger.warning(msg["text"])

    def shutdown(self) -> None:
        self.closed = True
        if self.thread is not None and self.thread.is_alive():
            if self.conn is not None:
                self.loop.call_soon_threadsafe(self.conn.close)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=5)


def _raise_if_error(reply: dict, bufs: list) -> None:
    if reply.get("error"):
        raise unpack(bufs)


def connect_client(address: str, namespace: str | None, runtime_env: dict | None,
                   config: SystemConfig) -> ClientWorker:
    """Connect to the client server at client://HOST:PORT; a clear ConnectionError within
    a few seconds when nothing (or something else) answers there."""
    from .._core import launcher
    from .protocol import parse_client_address
    host, port = parse_client_address(address)
    token = os.environ.get("RUNTIME_CLUSTER_TOKEN") or _local_token(f"{host}:{port}", launcher.live_clusters())
    if not token:
        raise ConnectionError(f"No token for {address}: set RUNTIME_CLUSTER_TOKEN to the cluster's token (the file "
                              "SESSION_DIR/token on the head; `runtime start --head` prints SESSION_DIR).")
    cw = ClientWorker(f"{host}:{port}", token, config)
    cw.start_loop_thread()
    timeout = 5.0
    try:
        cw.run_sync(cw.connect(namespace, runtime_env, timeout), timeout=timeout + config.startup_timeout_s)
    except BaseException as e:
        cw.shutdown()
        if isinstance(e, tls.PeerRefused):
            raise ConnectionError(f"Could not connect to {address}: {e}") from None
        if isinstance(e, (ConnectionRefusedError, OSError)) and not isinstance(e, ConnectionLost):
            raise ConnectionError(f"Nothing accepts thin clients at {address} ({type(e).__name__}: {e}). Check the "
                                  "address `runtime start --head` printed (its client server port, "
                                  "10001 by default).") from None
        if isinstance(e, (TimeoutError, asyncio.TimeoutError)):
            raise ConnectionError(f"No answer from the client server at {address} within {timeout:g} s; is it "
                                  "the head's client port, and reachable from here?") from None
        raise ConnectionError(f"Could not connect to {address}: {e}") from None
    return cw


def _local_token(client_address: str, clusters: list[dict]) -> str | None:
    """The token of a cluster on this machine whose client server is at that address."""
    for info in clusters:
        if info.get("client_address") == client_address:
            return info.get("token")
    return None
