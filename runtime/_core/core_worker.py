"""The core worker: the part of every driver and worker process that owns objects,
counts references, stores small values, submits tasks and actor calls, and serves
other processes' requests for the objects it owns.

Threads: user code calls in from any thread; all I/O happens on one event loop running
in the daemon thread `runtime-io`. Calls cross over with `call_soon_threadsafe` (for
submissions, batched) or `run_coroutine_threadsafe` (for calls that need an answer).
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import json
import logging
import os
import pickle
import sys
import threading
import time
from concurrent.futures import Future as ConcurrentFuture
from typing import Any, Callable

from ..config import SystemConfig
from ..exceptions import (
    ActorDiedError,
    GetTimeoutError,
    ObjectLostError,
    ObjectReconstructionFailedError,
    OwnerDiedError,
    PlacementGroupError,
    TaskCancelledError,
    TaskError,
    WorkerCrashedError,
)
from ..node import shm
from ..rpc.connection import Connection, ConnectionClosed, bind_socket, connect, serve, socket_address
from ..serialization.core import SerializedObject, deserialize, serialize
from ..worker import output
from ..worker.output import LinePrefixer
from .ids import ObjectID
from .memory_store import ERROR, INLINE, PENDING, SHM, MemoryStore
from .metrics_registry import registry as metrics_registry
from .object_ref import ObjectRef
from .private_files import make_private_dir
from .reference_table import RefEntry, ReferenceTable
from . import task_events as te
from .task_spec import TaskSpec, return_ids

logger = logging.getLogger("runtime")



class Lease:
    __slots__ = ("lease_id", "worker_id", "address", "conn", "gpus", "busy", "idle_handle", "sq", "dead", "nm",
                 "node_id")

    def __init__(self, reply: dict, conn: Connection, sq: SchedulingQueue, nm: Connection) -> None:
        self.lease_id = reply["lease_id"]
        self.worker_id = reply["worker_id"]
        self.address = reply["address"]
        self.gpus = reply["gpus"]
        self.node_id = reply["node_id"]
        self.nm = nm  # the node manager that granted it: the lease goes back there
        self.conn = conn
        self.busy: TaskSpec | None = None
        self.idle_handle: asyncio.TimerHandle | None = None
        self.sq = sq
        self.dead = False


class SchedulingQueue:
    """Tasks with the same resource demand and environment share leased workers."""

    __slots__ = ("key", "demand", "env", "queue", "leases", "requesting", "strategy", "infeasible")

    def __init__(self, key: str, demand: dict, env: dict, strategy: Any = None) -> None:
        self.key, self.demand, self.env, self.strategy = key, demand, env, strategy
        self.infeasible: str | None = None  # why no node can grant this demand, until one does
        self.queue: collections.deque[TaskSpec] = collections.deque()
        self.leases: list[Lease] = []
        self.requesting = 0


class ActorChannel:
    """Caller-side state of one actor: where it is, and calls not yet answered."""

    __slots__ = ("actor_id", "state", "address", "conn", "connecting", "queue", "inflight", "reason",
                 "subscribed", "handle_gone", "max_task_retries", "num_restarts", "version", "lock", "posted",
                 "node_id")

    def __init__(self, actor_id: str, max_task_retries: int) -> None:
        self.actor_id = actor_id
        self.state = "PENDING_CREATION"
        self.address = ""
        self.node_id = ""
        self.conn: Connection | None = None
        self.connecting = False
        self.queue: collections.deque[TaskSpec] = collections.deque()
        self.inflight: dict[bytes, TaskSpec] = {}
        self.reason = ""
        self.subscribed = False
        self.handle_gone = False
        self.max_task_retries = max_task_retries
        self.num_restarts = 0
        self.version = -1  # of the last control-store state applied
        # The caller's thread may send a call itself (CoreWorker.submit_actor_task); the loop
        # holds this lock while it changes where calls go or sends queued ones, so calls stay
        # in order. `posted` counts calls handed to the loop but not yet in `queue`.
        self.lock = threading.RLock()
        self.posted = 0


class CoreWorker:
    is_client = False  # runtime/client/worker.py's ClientWorker stands in for it in a thin client

    def __init__(self, *, mode: str, worker_id: str, token: str, session_dir: str, node_address: str,
                 gcs_address: str, config: SystemConfig, namespace: str = "", job_id: str = "",
                 sock_dir: str = "", node_ip: str = "127.0.0.1") -> None:
        self.mode = mode  # "driver" or "worker"
        self.worker_id = worker_id
        self.token = token
        self.session_dir = session_dir
        self.node_address = node_address
        self.gcs_address = gcs_address
        self.config = config
        self.namespace = namespace
        self.job_id = job_id
        self.node_id = ""
        self.shm_dir = ""
        self.node_ip = "127.0.0.1"
        self.metrics_export_port: int | None = None  # of its node manager (init() returns it)
        self.pid = os.getpid()
        sock_dir = sock_dir or os.path.join(session_dir, "sockets")  # short: unix paths max ~107 bytes
        make_private_dir(sock_dir)
        # Processes on other nodes connect here (to fetch objects, borrow, call actors): a unix socket
        # when every node is on this machine's loopback, else TCP on the node's own address.
        sock_path = os.path.join(sock_dir, f"{mode[0]}-{worker_id[:12]}.sock")
        self._listen_sock = (bind_socket("unix:" + sock_path)
                             if node_ip in ("127.0.0.1", "localhost") else bind_socket(f"tcp:{node_ip}:0"))
        if node_ip in ("127.0.0.1", "localhost"):
            os.chmod(sock_path, 0o600)  # bound with this process's umask (a driver's is the user's)
        self.address = socket_address(self._listen_sock)
        self.store = MemoryStore()
        self.refs = ReferenceTable(self.address, self._on_release, self._on_new_borrow)
        self.loop = asyncio.new_event_loop()
        self.thread: threading.Thread | None = None
        self.handlers: dict[str, Callable] = {
            "get_object": self.on_get_object, "add_borrower": self.on_add_borrower,
            "remove_borrower": self.on_remove_borrower, "release_contained": self.on_release_contained,
            "list_refs": self.on_list_refs, "actor_update": self.on_actor_update, "infeasible": self.on_infeasible,
            "task_output": self.on_task_output, "cancel_task": self.on_cancel_task,
            "recover_object": self.on_recover_object, "node_dead": self.on_node_dead,
        }
        # Called (on the io thread) with each output message of a task this process submitted;
        # returns True if it took it. The notebook extension routes output into cells with it.
        self.output_handler: Callable[[dict], bool] | None = None
        self._prefix_output = LinePrefixer()
        self.conns: dict[str, Connection] = {}
        self._connecting: dict[str, asyncio.Future] = {}
        self.nm: Connection | None = None
        self.gcs: Connection | None = None
        self._gcs_connecting: asyncio.Future | None = None
        self.queues: dict[str, SchedulingQueue] = {}
        self.tasks: dict[bytes, TaskSpec] = {}  # return object id -> pending spec (for cancel)
        self.actors: dict[str, ActorChannel] = {}
        self._posts: collections.deque = collections.deque()
        # ObjectRef.__del__ may run inside any allocation (GC), even while this thread holds
        # one of our locks: it only appends here; the loop applies the decrements.
        self._dead_refs: collections.deque = collections.deque()
        self._dead_refs_scheduled = False
        self._post_lock = threading.Lock()
        self._post_scheduled = False
        self._fetching: set[bytes] = set()
        self._infeasible_warned: set[tuple] = set()  # (text, cell) already shown
        self.current_task_name = ""
        self.current_task_id = b""
        self.current_actor_id = ""
        self.actor_reconstructed = False
        self.gpu_ids: list[int] = []
        self.assigned_resources: dict = {}
        self.blocked_hook: Callable[[bool], None] | None = None  # set by the worker executor
        self.closed = False
        self._prune_handle: asyncio.TimerHandle | None = None
        # The notebook cell (dict: notebook, cell_id, execution_count) that what this process
        # submits now belongs to: set by the notebook extension in a driver, and from the
        # task being run in a worker, so child tasks carry their parent's cell.
        self.current_cell: dict | None = None
        self.current_pg: list | None = None  # placement group the running task captures children into
        self.object_cells: dict[bytes, dict] = {}  # owned object -> the cell that created it
        self.object_sites: dict[bytes, str] = {}  # owned object -> where it was created, when recorded
        self.lineage: dict[bytes, TaskSpec] = {}  # owned result in shared memory -> the task that made it
        self.task_events = te.TaskEventBuffer(self.address)
        self._events_armed = False

    # -- loop plumbing -----------------------------------------------------------------
    def start_loop_thread(self) -> None:
        self.thread = threading.Thread(target=self.loop.run_forever, name="runtime-io", daemon=True)
        self.thread.start()

    def run_sync(self, coro: Any, timeout: float | None = None) -> Any:
        if threading.current_thread() is self.thread:
            raise RuntimeError("blocking runtime call made on the runtime's own event loop thread")
        fut = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return fut.result(timeout)

    def post(self, fn: Callable, *args: Any) -> None:
        """Run fn(*args) on the loop, in order, batching wake-ups."""
        self._posts.append((fn, args))
        if not self._post_scheduled:
            with self._post_lock:
                if not self._post_scheduled:
                    self._post_scheduled = True
                    self.loop.call_soon_threadsafe(self._drain_posts)

    def _drain_posts(self) -> None:
        with self._post_lock:
            self._post_scheduled = False
        posts = self._posts
        while posts:
            fn, args = posts.popleft()
            try:
                fn(*args)
            except Exception:
                logger.exception("internal error in %s", getattr(fn, "__name__", fn))

    def defer_remove_local(self, oid: bytes) -> None:
        self._dead_refs.append(oid)
        if not self._dead_refs_scheduled and not self.closed:
            self._dead_refs_scheduled = True
            self.loop.call_soon_threadsafe(self._drain_dead_refs)

    def _drain_dead_refs(self) -> None:
        self._dead_refs_scheduled = False
        dead = self._dead_refs
        while dead:
            self.refs.remove_local(dead.popleft())

    def on_loop(self, fn: Callable, *args: Any) -> None:
        if threading.current_thread() is self.thread:
            fn(*args)
        else:
            self.post(fn, *args)

    def spawn(self, coro: Any) -> asyncio.Task:
        task = self.loop.create_task(coro)
        _BACKGROUND.add(task)
        task.add_done_callback(_BACKGROUND.discard)
        return task

    async def connect_cluster(self, kind: str, extra_info: dict | None = None) -> None:
        self._server = await serve(self._listen_sock, self.handlers, self.token, on_close=self._on_conn_closed,
                                   name=f"{kind}-server", hello_timeout=self.config.hello_timeout_s)
        info = {"kind": kind, "worker_id": self.worker_id, "address": self.address, "pid": self.pid,
                **(extra_info or {})}
        self.nm = await connect(self.node_address, self.handlers, self.token, info=info,
                                on_close=self._on_nm_closed, timeout=self.config.startup_timeout_s, name="->node")
        reply, _ = await self.nm.request({"op": "node_info"}, timeout=self.config.startup_timeout_s)
        self.node_id, self.shm_dir, self.node_ip = reply["node_id"], reply["shm_dir"], reply["node_ip"]
        self.metrics_export_port = reply.get("metrics_export_port")
        metrics_registry.on_dirty = self._metrics_dirty
        if metrics_registry.dirty:  # recorded before init()
            self._metrics_dirty()
        if kind == "driver":
            await self.ensure_gcs()

    async def ensure_gcs(self) -> Connection:
        if self.gcs is not None and not self.gcs.closed:
            return self.gcs
        if self._gcs_connecting is None:
            self._gcs_connecting = asyncio.ensure_future(self._open_gcs())
        return await asyncio.shield(self._gcs_connecting)

    async def _open_gcs(self) -> Connection:
        """Connect to the control store. After losing it (it restarted), keep trying for
        gcs_reconnect_timeout_s, then subscribe again to the actors this process calls."""
        again = self.gcs is not None
        deadline = time.monotonic() + (self.config.gcs_reconnect_timeout_s if again else 0)
        try:
            while True:
                try:
                    conn = await connect(self.gcs_address, self.handlers, self.token,
                                         info={"kind": self.mode, "worker_id": self.worker_id, "job_id": self.job_id},
                                         on_close=self._gcs_closed, timeout=self.config.startup_timeout_s, name="->gcs")
                    break
                except (ConnectionError, OSError, asyncio.TimeoutError):
                    if not again or self.closed or time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.1)  # retry period while the control store restarts
            self.gcs = conn
            if again:
                logger.info("reconnected to the control store")
                for ch in self.actors.values():
                    if ch.subscribed and ch.state != "DEAD":
                        self.spawn(self._subscribe_actor(ch))
            return conn
        finally:
            self._gcs_connecting = None

    def _gcs_closed(self, conn: Connection) -> None:
        # Reconnect at once, not on the next request: the control store learns this driver is
        # alive (its job and actors stay), and actor state updates resume.
        if not self.closed and conn is self.gcs:
            self.spawn(self._reconnect_quietly())

    async def _reconnect_quietly(self) -> None:
        try:
            await self.ensure_gcs()
        except Exception as e:  # noqa: BLE001 - the next request that needs it reports the failure
            logger.warning("the control store did not come back: %s", e)

    async def gcs_request(self, msg: dict, bufs: list | tuple = (), timeout: float | None = None) -> tuple[dict, list]:
        gcs = await self.ensure_gcs()
        return await gcs.request(msg, bufs, timeout=timeout or self.config.rpc_timeout_s)

    def _on_nm_closed(self, conn: Connection) -> None:
        if self.mode == "worker" and not self.closed:
            os._exit(1)  # our node manager is gone: nothing left to serve

    async def get_conn(self, address: str) -> Connection:
        conn = self.conns.get(address)
        if conn is not None and not conn.closed:
            return conn
        fut = self._connecting.get(address)
        if fut is None:
            fut = self._connecting[address] = self.loop.create_future()

            async def _open() -> None:
                try:
                    c = await connect(address, self.handlers, self.token,
                                      info={"kind": self.mode, "worker_id": self.worker_id, "address": self.address},
                                      on_close=self._on_conn_closed, timeout=10)
                    c.sent_functions = set()  # type: ignore[attr-defined]
                    self.conns[address] = c
                    fut.set_result(c)
                except Exception as e:
                    fut.set_exception(e)
                finally:
                    self._connecting.pop(address, None)

            self.spawn(_open())
        return await asyncio.shield(fut)

    def _on_conn_closed(self, conn: Connection) -> None:
        if self.closed:
            return
        for a, c in list(self.conns.items()):
            if c is conn:
                del self.conns[a]
        # A borrower (server side) that went away no longer borrows.
        peer = conn.peer_info.get("address")
        if conn.server_side and peer:
            self.refs.remove_borrower_everywhere(peer)
        for sq in self.queues.values():
            for lease in list(sq.leases):
                if lease.conn is conn:
                    lease.dead = True
                    sq.leases.remove(lease)
        for ch in self.actors.values():
            if ch.conn is conn:
                self._actor_conn_lost(ch)

    # -- references ----------------------------------------------------------------------
    def _on_new_borrow(self, oid: bytes, owner: str) -> None:
        if owner:
            self.on_loop(self._send_owner, owner, {"op": "add_borrower", "o": oid, "a": self.address})

    def _send_owner(self, owner: str, msg: dict) -> None:
        conn = self.conns.get(owner)
        if conn is not None and not conn.closed:
            conn.send(msg)
            return

        async def _later() -> None:
            try:
                (await self.get_conn(owner)).send(msg)
            except Exception:
                pass  # the owner is gone; nothing to tell it

        self.spawn(_later())

    def _on_release(self, oid: bytes, e: RefEntry) -> None:
        if self.closed:
            return
        self.on_loop(self._release_on_loop, oid, e)

    def _release_on_loop(self, oid: bytes, e: RefEntry) -> None:
        entry = self.store.pop(oid)
        if e.owned:
            if entry is not None:
                if entry.state == SHM:
                    self.free_shm(oid, entry.node_id)
                self._release_nested(oid, entry.nested)
            self.tasks.pop(oid, None)
            self.object_cells.pop(oid, None)
            self.object_sites.pop(oid, None)
            self._drop_lineage(oid)
        else:
            self._send_owner(e.owner, {"op": "remove_borrower", "o": oid, "a": self.address})

    def free_shm(self, oid: bytes, node_id: str) -> None:
        """Free an object's shared-memory copy on the node that holds it (through our own node
        manager, which forwards; the holder frees the copies other nodes pulled)."""
        if self.nm is not None and not self.nm.closed:
            self.nm.send({"op": "free_objects", "object_ids": [oid], "node_id": node_id})

    def _release_nested(self, outer: bytes, nested: list) -> None:
        for oid, owner, holder in nested:
            if holder == self.address:
                self.refs.remove_contained(oid, outer)
            else:
                self._send_owner(holder, {"op": "release_contained", "o": oid, "x": outer})

    def _pin_nested(self, outer: bytes, so: SerializedObject) -> list:
        nested = []
        for r in so.nested_refs:
            self.refs.add_contained(r._id, r._owner, outer)
            nested.append((r._id, r._owner, self.address))
        return nested

    # owner-side handlers
    def on_add_borrower(self, conn: Connection, msg: dict, bufs: list) -> None:
        self.refs.add_borrower(msg["o"], msg["a"])

    def on_remove_borrower(self, conn: Connection, msg: dict, bufs: list) -> None:
        self.refs.remove_borrower(msg["o"], msg["a"])

    def on_release_contained(self, conn: Connection, msg: dict, bufs: list) -> None:
        self.refs.remove_contained(msg["o"], msg["x"])

    def on_list_refs(self, conn: Connection, msg: dict, bufs: list) -> dict:
        out = []
        for oid, e in self.refs.snapshot():
            if not e.owned:
                continue
            entry = self.store.entries.get(oid)
            state = {PENDING: "PENDING", INLINE: "INLINE", SHM: "SHARED_MEMORY", ERROR: "ERROR"}[
                entry.state if entry else PENDING]
            out.append({"object_id": oid.hex(), "size_bytes": entry.size if entry else 0, "owner": self.address,
                        "owner_worker_id": self.worker_id, "owner_pid": self.pid, "reference_kinds": e.kinds(),
                        "local_refs": e.local, "pending_task_refs": e.submitted, "captured_in": len(e.contained_in),
                        "borrowers": len(e.borrowers), "state": state, "spilled": False,
                        "cell": self.object_cells.get(oid), "call_site": self.object_sites.get(oid),
                        "owner_is_driver": self.mode == "driver"})
        return {"objects": out}

    # -- objects: put ------------------------------------------------------------------------
    def put(self, value: Any, *, _owner: str | None = None) -> ObjectRef:
        if isinstance(value, ObjectRef):
            raise TypeError("Calling put() on an ObjectRef is not allowed: the value is already stored. "
                            "Pass the ref itself, or put a list containing it.")
        so = serialize(value)
        oid = ObjectID.new()
        ref = ObjectRef(oid, self.address)
        nested = self._pin_nested(oid, so)
        self.store_serialized(oid, so, nested, owner_wid=self.worker_id)
        if self.current_cell is not None:
            self.object_cells[oid] = self.current_cell
        if self.config.record_ref_creation_sites:
            self.object_sites[oid] = call_site()
        return ref

    def store_serialized(self, oid: bytes, so: SerializedObject, nested: list, owner_wid: str) -> tuple[str, Any]:
        """Store locally: inline if small, else in the node's shared memory. Returns how."""
        total = so.total_bytes
        if total < self.config.max_inline_bytes:
            bufs = [bytes(b) for b in so.buffers]  # copy: the caller may mutate its buffers later
            self.store.set_inline(oid, so.meta, bufs, nested)
            return "i", None
        size = self.write_shm(oid, so, owner_wid)
        self.store.set_shm(oid, size, self.node_id, nested)
        return "s", size

    def write_shm(self, oid: bytes, so: SerializedObject, owner_wid: str) -> int:
        size = shm.shm_size(so)
        reply, _ = self.run_sync(self.nm.request(
            {"op": "create_object", "object_id": oid, "size": size, "owner": owner_wid},
            timeout=self.config.rpc_timeout_s))
        shm.write_object(self.shm_dir, oid, so, size, reuse=reply.get("reuse", False))
        self.on_loop(self._after_write, oid)
        return size

    def _after_write(self, oid: bytes) -> None:
        self.nm.send({"op": "seal_object", "object_id": oid})
        if shm.has_write_maps() and self._prune_handle is None:
            self._prune_handle = self.loop.call_later(2.0, self._prune_write_maps)

    def _prune_write_maps(self) -> None:
        # Mappings kept for reuse (shm.py) must not outlive their file by long.
        shm.prune_write_maps()
        self._prune_handle = self.loop.call_later(2.0, self._prune_write_maps) if shm.has_write_maps() else None

    # -- objects: get / wait ---------------------------------------------------------------
    def _ensure_fetch(self, ref: ObjectRef) -> None:
        """Make sure a value we don't own is being fetched from its owner (loop thread)."""
        oid = ref._id
        if self.store.ready(oid) or oid in self._fetching:
            return
        self._fetching.add(oid)
        self.store.create_pending(oid)
        self.spawn(self._fetch(oid, ref._owner))

    async def _fetch(self, oid: bytes, owner: str) -> None:
        try:
            conn = await self.get_conn(owner)
            reply, bufs = await conn.request({"op": "get_object", "o": oid}, timeout=None)
            self._apply_object_reply(oid, reply, bufs)
        except (ConnectionError, OSError, asyncio.TimeoutError) as e:
            self.store.set_error(oid, OwnerDiedError(oid.hex(), f"its owner {owner} is unreachable ({e}); "
                                                      "the process that created it has exited."))
        except Exception as e:  # noqa: BLE001 - the owner answered with an error
            self.store.set_error(oid, e if isinstance(e, ObjectLostError) else ObjectLostError(oid.hex(), str(e)))
        finally:
            self._fetching.discard(oid)

    def _apply_object_reply(self, oid: bytes, reply: dict, bufs: list) -> None:
        kind = reply["k"]
        if kind == "i":
            self.store.set_inline(oid, reply["m"], [bytes(b) for b in bufs])
        elif kind == "s":
            self.store.set_shm(oid, reply["size"], reply["node"])
        elif kind == "e":
            self.store.set_error(oid, pickle.loads(reply["m"]))
        else:
            self.store.set_error(oid, ObjectLostError(oid.hex(), reply.get("why", "the owner no longer has it")))

    def on_get_object(self, conn: Connection, msg: dict, bufs: list) -> Any:
        oid = msg["o"]
        e = self.store.entries.get(oid)
        if e is None:
            return {"k": "x", "why": "the owner has already freed it (no references were left)"}
        if e.state == PENDING:
            fut = self.loop.create_future()

            def done() -> None:
                if not fut.done():
                    fut.set_result(None)

            if self.store.add_waiter(oid, lambda: self.on_loop(done)):
                async def wait_then_reply() -> Any:
                    await fut
                    return self._object_reply(oid)

                return wait_then_reply()
        return self._object_reply(oid)

    def _object_reply(self, oid: bytes) -> Any:
        e = self.store.entries.get(oid)
        if e is None:
            return {"k": "x", "why": "it was freed"}
        if e.state == INLINE:
            return {"k": "i", "m": e.meta}, e.bufs
        if e.state == SHM:
            return {"k": "s", "size": e.size, "node": e.node_id}
        return {"k": "e", "m": _pickle_error(e.error)}

    def _wait_ready(self, refs: list[ObjectRef], num_returns: int, timeout: float | None) -> None:
        """Block until at least `num_returns` of `refs` are ready (or timeout)."""
        store = self.store
        pending = [r for r in refs if not store.ready(r._id)]
        need = num_returns - (len(refs) - len(pending))
        if need <= 0:
            return
        # A plain lock, released by whoever makes the last needed object ready: cheaper to
        # wake than an Event (no Python-level Condition on either side).
        done = threading.Lock()
        done.acquire()
        if need == 1:
            def one_ready() -> None:
                try:
                    done.release()
                except RuntimeError:  # another of the refs got there first
                    pass
        else:
            remaining = [need]
            count_lock = threading.Lock()

            def one_ready() -> None:
                with count_lock:
                    remaining[0] -= 1
                    if remaining[0] != 0:
                        return
                done.release()

        to_fetch = []
        for r in pending:
            if not store.add_waiter(r._id, one_ready):
                one_ready()
            if r._owner != self.address:
                to_fetch.append(r)
        if to_fetch:
            self.on_loop(lambda: [self._ensure_fetch(r) for r in to_fetch])
        if not done.locked():
            return
        blocked = self.blocked_hook is not None
        if blocked:
            self.blocked_hook(True)
        try:
            if not done.acquire(timeout=-1 if timeout is None else max(timeout, 0)):
                left = sum(1 for r in refs if not store.ready(r._id)) - (len(refs) - num_returns)
                raise GetTimeoutError(f"Get timed out: {left} of {len(refs)} objects were not ready "
                                      f"after {timeout} s. Raise the timeout, or check `runtime list tasks`.")
        finally:
            if blocked:
                self.blocked_hook(False)

    def get(self, refs: list[ObjectRef], timeout: float | None = None) -> list[Any]:
        self._wait_ready(refs, len(refs), timeout)
        return [self.materialize(r) for r in refs]

    def materialize(self, ref: ObjectRef) -> Any:
        e = self.store.entries.get(ref._id)
        if e is None or e.state == PENDING:
            raise ObjectLostError(ref.hex(), "it was freed while being read")
        if e.state == INLINE:
            return deserialize(e.meta, e.bufs)
        if e.state == SHM:
            if e.mapped is None:
                try:
                    e.mapped = self._map_shm(ref._id, e.node_id)
                except ObjectLostError as lost:
                    if e.node_id == self.node_id:
                        raise
                    # Its node is gone: rebuild it from lineage (owner) or have the owner do so.
                    self.run_sync(self._recover(ref, e.node_id, lost.detail))
                    return self.materialize(ref)
            meta, bufs = e.mapped
            return deserialize(meta, bufs)
        err = e.error
        if isinstance(err, TaskError):
            raise err.as_instanceof_cause()
        raise err

    def _map_shm(self, oid: bytes, node_id: str) -> tuple:
        mapped = shm.map_object(self.shm_dir, oid)
        if mapped is None:
            if node_id and node_id != self.node_id:  # on another node: our node manager pulls a copy
                reply, _ = self.run_sync(self.nm.request({"op": "pull_object", "object_id": oid, "node_id": node_id},
                                                         timeout=None))
            else:  # spilled: ask the node manager to bring it back
                reply, _ = self.run_sync(self.nm.request({"op": "restore_object", "object_id": oid}))
            mapped = shm.map_object(self.shm_dir, oid) if reply.get("found") else None
            if mapped is None:
                where = reply.get("why") or "the node freed or lost it"
                raise ObjectLostError(oid.hex(), f"its shared-memory copy is gone ({where})")
        return mapped

    def wait(self, refs: list[ObjectRef], num_returns: int, timeout: float | None) -> tuple[list, list]:
        try:
            self._wait_ready(refs, num_returns, timeout)
        except GetTimeoutError:
            pass
        ready, not_ready = [], []
        for r in refs:
            (ready if self.store.ready(r._id) and len(ready) < num_returns else not_ready).append(r)
        return ready, not_ready

    def get_future(self, ref: ObjectRef) -> ConcurrentFuture:
        fut: ConcurrentFuture = ConcurrentFuture()

        def resolve() -> None:
            try:
                fut.set_result(self.materialize(ref))
            except BaseException as e:  # noqa: BLE001 - handed to the awaiting code
                fut.set_exception(e)

        def on_ready() -> None:
            # Deserialize off the io loop: values can be large, and get may need the loop.
            threading.Thread(target=resolve, daemon=True).start() if self.store.entries.get(
                ref._id) and self.store.entries[ref._id].state == SHM else resolve()

        if not self.store.add_waiter(ref._id, on_ready):
            on_ready()
        elif ref._owner != self.address:
            self.on_loop(self._ensure_fetch, ref)
        return fut

    # -- task submission -------------------------------------------------------------------
    def prepare_args(self, args: tuple, kwargs: dict, what: str) -> tuple[SerializedObject, list[ObjectRef]]:
        from .task_spec import ArgRef
        deps: list[ObjectRef] = []

        def conv(a: Any) -> Any:
            if isinstance(a, ObjectRef):
                deps.append(a)
                return ArgRef(len(deps) - 1)
            return a

        a2 = [conv(a) for a in args]
        k2 = {k: conv(v) for k, v in kwargs.items()}
        try:
            so = serialize((a2, k2))
        except Exception as e:
            from .bad_input import unpicklable_argument_error
            raise unpicklable_argument_error(what, args, kwargs, e) from e
        return so, deps

    def submit_task(self, spec: TaskSpec, so: SerializedObject, deps: list[ObjectRef]) -> list[ObjectRef]:
        refs = self._attach_args(spec, so, deps)
        self.post(self._submit_on_loop, spec)
        return refs

    def _attach_args(self, spec: TaskSpec, so: SerializedObject, deps: list[ObjectRef]) -> list[ObjectRef]:
        """Pin the task's arguments until it finishes; create its (pending) return refs."""
        spec.args_meta, spec.args_bufs = so.meta, so.buffers
        cell = spec.cell = self.current_cell
        if cell is not None:
            spec.context = contextvars.copy_context()
            for oid in spec.return_ids:
                self.object_cells[oid] = cell
        if self.config.record_ref_creation_sites:
            site = call_site()
            for oid in spec.return_ids:
                self.object_sites[oid] = site
        self.task_event(spec, te.PENDING)
        if so.total_bytes >= self.config.max_inline_bytes and so.buffers:
            # Large arguments go to shared memory once; the task reads them zero-copy.
            spec.nested = [self.put_args(so)]
            spec.args_meta, spec.args_bufs = b"", []
        else:
            spec.nested = list(so.nested_refs)
        spec.deps = deps
        for r in deps:
            self.refs.add_submitted(r._id, r._owner)
        for r in spec.nested:
            self.refs.add_submitted(r._id, r._owner)
        refs = [ObjectRef(oid, self.address) for oid in spec.return_ids]
        for oid in spec.return_ids:
            self.store.create_pending(oid)
        return refs

    def put_args(self, so: SerializedObject) -> ObjectRef:
        oid = ObjectID.new()
        ref = ObjectRef(oid, self.address)
        nested = self._pin_nested(oid, so)
        self.store_serialized(oid, so, nested, owner_wid=self.worker_id)
        return ref

    def _submit_on_loop(self, spec: TaskSpec) -> None:
        for oid in spec.return_ids:
            self.tasks[oid] = spec
        self._when_deps_ready(spec, self._enqueue)

    def _when_deps_ready(self, spec: TaskSpec, then: Callable[[TaskSpec], None]) -> None:
        waiting = [r for r in spec.deps if r._owner == self.address and not self.store.ready(r._id)]
        if not waiting:
            then(spec)
            return
        left = [len(waiting)]

        def one() -> None:
            left[0] -= 1
            if left[0] == 0:
                then(spec)

        for r in waiting:
            if not self.store.add_waiter(r._id, lambda: self.on_loop(one)):
                one()

    def _dep_error(self, spec: TaskSpec) -> BaseException | None:
        for r in spec.deps:
            e = self.store.entries.get(r._id)
            if e is not None and e.state == ERROR and r._owner == self.address:
                return e.error
        return None

    def _enqueue(self, spec: TaskSpec) -> None:
        if spec.cancelled:
            return
        err = self._dep_error(spec)
        if err is not None:
            self._finish_task(spec, error=err)
            return
        sq = self.queues.get(spec.sched_key)
        if sq is None:
            sq = self.queues[spec.sched_key] = SchedulingQueue(spec.sched_key, spec.demand, spec.env, spec.strategy)
        sq.queue.append(spec)
        self._dispatch(sq)

    def _dispatch(self, sq: SchedulingQueue) -> None:
        if sq.infeasible is not None:  # a task joined a queue already known to wait: its cell is told
            self._say_infeasible(sq)
        for lease in sq.leases:
            if not sq.queue:
                break
            if lease.busy is None and not lease.dead:
                self._push(lease, sq.queue.popleft())
        want = min(len(sq.queue), 64) - sq.requesting
        for _ in range(max(0, want)):
            sq.requesting += 1
            self.spawn(self._request_lease(sq))

    async def _request_lease(self, sq: SchedulingQueue) -> None:
        """Ask our node manager for a worker; follow its spillback to another node's manager."""
        nm, msg = self.nm, {"op": "lease", "demand": sq.demand, "env": sq.env, "strategy": sq.strategy,
                            "job": self.job_id}
        try:
            while True:
                reply, _ = await nm.request(msg, timeout=None)
                if "spillback" not in reply:
                    break
                nm = await self.get_conn(reply["spillback"])
                msg["spilled"] = True
        except (ConnectionError, OSError):
            sq.requesting -= 1
            if sq.queue and not self.closed:  # that node died: ask again (our own node decides anew)
                self.loop.call_later(0.1, self._dispatch, sq)
            return
        except Exception as e:  # noqa: BLE001 - the request itself is wrong (e.g. affinity to a dead node)
            sq.requesting -= 1
            while sq.queue:
                self._finish_task(sq.queue.popleft(), error=e)
            return
        sq.requesting -= 1
        sq.infeasible = None  # granted: the cluster can hold it now
        try:
            conn = await self.get_conn(reply["address"])
        except Exception:
            logger.warning("could not reach leased worker %s", reply["address"])
            self._return_lease_msg(nm, reply, kill=True)
            self._dispatch(sq)
            return
        lease = Lease(reply, conn, sq, nm)
        sq.leases.append(lease)
        if sq.queue:
            self._push(lease, sq.queue.popleft())
        else:
            self._return_lease(lease)

    def _return_lease_msg(self, nm: Connection, reply: dict, kill: bool = False) -> None:
        if nm is not None and not nm.closed:
            nm.send({"op": "return_lease", "worker_id": reply["worker_id"], "lease_id": reply["lease_id"],
                          "kill": kill})

    def _return_lease(self, lease: Lease) -> None:
        lease.idle_handle = None
        if lease.busy is not None or lease.dead:
            return
        lease.dead = True
        if lease in lease.sq.leases:
            lease.sq.leases.remove(lease)
        self._return_lease_msg(lease.nm, {"worker_id": lease.worker_id, "lease_id": lease.lease_id})

    def _push(self, lease: Lease, spec: TaskSpec) -> None:
        if lease.idle_handle is not None:
            lease.idle_handle.cancel()
            lease.idle_handle = None
        lease.busy = spec
        spec.lease = lease
        self.task_event(spec, te.RUNNING, (lease.worker_id, lease.node_id))
        msg, bufs = self._task_message(spec, lease.conn, lease.node_id)
        msg["gpu"] = lease.gpus
        msg["res"] = spec.demand
        try:
            lease.conn.request_cb(msg, bufs, lambda r, b, err: self._on_task_done(
                lease, spec, None if err else (r, b), err))
        except ConnectionClosed as e:
            self._on_task_done(lease, spec, None, e)

    def _task_message(self, spec: TaskSpec, conn: Connection, node_id: str) -> tuple[dict, list]:
        """The push message; a dependency in shared memory on the worker's own node (`node_id`)
        is mapped there directly, others the worker fetches (and pulls) itself."""
        bufs = list(spec.args_bufs)
        deps = []
        for r in spec.deps:
            e = self.store.entries.get(r._id)
            if r._owner == self.address and e is not None and e.state == INLINE:
                deps.append(["i", r._id, r._owner, e.meta, len(e.bufs)])
                bufs.extend(e.bufs)
            elif e is not None and e.state == SHM and e.node_id == node_id:
                deps.append(["s", r._id, r._owner, None, 0])
            else:
                deps.append(["r", r._id, r._owner, None, 0])
        msg = {"op": "push" if not spec.actor_id else "actor_call", "t": spec.task_id, "n": spec.name,
               "a": spec.args_meta, "nb": len(spec.args_bufs), "d": deps, "r": spec.return_ids,
               "job": self.job_id, "ns": self.namespace, "ow": self.worker_id, "oa": self.address}
        if spec.nested and not spec.args_meta:
            msg["ar"] = [spec.nested[0]._id, self.address]
        if spec.cell is not None:
            msg["cl"] = spec.cell
        if spec.pg is not None:
            msg["pg"] = spec.pg
        if spec.actor_id:
            msg["m"] = spec.method
        else:
            msg["f"] = spec.fid
            sent = conn.sent_functions  # type: ignore[attr-defined]
            if spec.fid not in sent:
                msg["fn"] = spec.fn_blob
                sent.add(spec.fid)
        return msg, bufs

    def _on_task_done(self, lease: Lease, spec: TaskSpec, result: Any, exc: BaseException | None) -> None:
        if self.closed:
            return  # shutting down: connections closing is expected, not a crash
        lease.busy = None
        sq = lease.sq
        if exc is not None:
            lease.dead = True
            if lease in sq.leases:
                sq.leases.remove(lease)
            if spec.cancelled:
                self._finish_task(spec, error=TaskCancelledError(spec.task_id.hex()))
            elif spec.max_retries != 0:
                spec.max_retries -= 1
                output.in_context(spec, logger.warning, "A worker died while running task `%s`; retrying (%s "
                                  "retries left).", spec.name, "infinite" if spec.max_retries < 0 else spec.max_retries)
                sq.queue.appendleft(spec)
            else:
                self._finish_task(spec, error=WorkerCrashedError(spec.name, f"worker {lease.worker_id[:8]} exited"))
        else:
            reply, bufs = result
            if not self._maybe_retry_exception(spec, reply):
                self._apply_results(spec, reply, bufs, lease.address)
            else:
                sq.queue.appendleft(spec)
        if sq.strategy == "SPREAD" and not lease.dead:
            self._return_lease(lease)  # one task per lease: each is placed (spread) on its own
        if sq.queue:
            self._dispatch(sq)
        elif not lease.dead and lease.busy is None:
            lease.idle_handle = self.loop.call_later(self.config.lease_idle_timeout_s, self._return_lease, lease)

    def _maybe_retry_exception(self, spec: TaskSpec, reply: dict) -> bool:
        if not spec.retry_exceptions or spec.max_retries == 0 or spec.cancelled:
            return False
        for kind, meta, *_ in reply["res"]:
            if kind == "e":
                err = pickle.loads(meta)
                cause = getattr(err, "cause", err)
                rx = spec.retry_exceptions
                if rx is True or (isinstance(rx, (list, tuple)) and isinstance(cause, tuple(rx))):
                    spec.max_retries -= 1
                    logger.info("task `%s` raised %s; retrying", spec.name, type(cause).__name__)
                    return True
        return False

    def _apply_results(self, spec: TaskSpec, reply: dict, bufs: list, worker_address: str) -> None:
        pos = 0
        for oid, (kind, meta, nbufs, nested) in zip(spec.return_ids, reply["res"]):
            if not self.refs.holds(oid):  # nobody wants this result any more
                if kind == "s":
                    self.free_shm(oid, reply.get("node", self.node_id))
                pos += nbufs
                for noid, _owner, holder in nested or ():
                    self._send_owner(holder, {"op": "release_contained", "o": noid, "x": oid})
                continue
            nested = [tuple(n) for n in nested or ()]
            if kind == "i":
                self.store.set_inline(oid, meta, [bytes(b) for b in bufs[pos:pos + nbufs]], nested)
            elif kind == "s":
                self.store.set_shm(oid, meta, reply.get("node", self.node_id), nested)
            else:
                self.store.set_error(oid, pickle.loads(meta))
            pos += nbufs
        for oid in reply.get("b", ()):  # refs the worker still borrows
            self.refs.add_borrower(oid, worker_address)
        self._task_finished(spec, self._reply_error(reply))

    def _finish_task(self, spec: TaskSpec, *, error: BaseException) -> None:
        for oid in spec.return_ids:
            self.store.set_error(oid, error)
        self._task_finished(spec, error)

    @staticmethod
    def _reply_error(reply: dict) -> BaseException | None:
        for kind, meta, *_ in reply["res"]:
            if kind == "e":
                try:
                    return pickle.loads(meta)
                except Exception as e:  # the owner already reported it; the event only summarises
                    return e
        return None

    def _task_finished(self, spec: TaskSpec, error: BaseException | None = None) -> None:
        if spec.finished:
            return
        spec.finished = True
        state = te.FINISHED if error is None else (
            te.CANCELLED if isinstance(error, TaskCancelledError) else te.FAILED)
        self.task_event(spec, state, error)
        for oid in spec.return_ids:
            if self.tasks.get(oid) is spec:
                del self.tasks[oid]
        if not self._keep_lineage(spec, error):
            self._release_task_args(spec)
        if spec.actor_id:
            ch = self.actors.get(spec.actor_id)
            if ch is not None:
                ch.inflight.pop(spec.task_id, None)
                self._maybe_kill_out_of_scope(ch)

    def _release_task_args(self, spec: TaskSpec) -> None:
        for r in spec.deps:
            self.refs.remove_submitted(r._id)
        for r in spec.nested:
            self.refs.remove_submitted(r._id)
        spec.deps, spec.nested = [], []

    # -- lineage: rebuilding results lost with a node ----------------------------------------
    # A task's results in shared memory live on one node; if it dies they are gone. As in Ray,
    # the owner keeps the task (and its arguments pinned) while such a result is referenced and
    # the task has retries left, and runs it again when a reader finds the copy gone.
    def _keep_lineage(self, spec: TaskSpec, error: BaseException | None) -> bool:
        if error is not None or spec.actor_id or spec.max_retries == 0:
            return False
        kept = False
        for oid in spec.return_ids:
            e = self.store.entries.get(oid)
            if e is not None and e.state == SHM:
                self.lineage[oid] = spec
                kept = True
        return kept

    def _drop_lineage(self, oid: bytes) -> None:
        spec = self.lineage.pop(oid, None)
        if spec is not None and not any(self.lineage.get(o) is spec for o in spec.return_ids):
            self._release_task_args(spec)

    async def reconstruct(self, oid: bytes, lost_node: str, why_lost: str = "") -> None:
        """Make `oid` (owned, its copy lost with `lost_node`) available again, or store why not."""
        e = self.store.entries.get(oid)
        if e is None or (e.state == SHM and e.node_id != lost_node) or e.state in (INLINE, ERROR):
            return  # freed, or already rebuilt elsewhere
        if e.state == SHM:
            spec = self.lineage.get(oid)
            if spec is None or spec.max_retries == 0:
                why = ("its task has no retries left (max_retries); raise max_retries to let lost results be rebuilt"
                       if spec is not None else
                       "no lineage is kept for it (put() objects, actor results and tasks with max_retries=0 "
                       "cannot be rebuilt; raise max_retries)")
                self.store.set_error(oid, ObjectReconstructionFailedError(
                    oid.hex(), f"its only copy was on node {lost_node[:8]}, which is gone, and {why}"))
                return
            if spec.max_retries > 0:
                spec.max_retries -= 1
            self._forget_leases_on(lost_node)
            output.in_context(spec, logger.warning, "Rebuilding the results of task `%s`: their only copy was on "
                              "node %s: %s.", spec.name, lost_node[:8], why_lost or "the node is gone")
            for o in spec.return_ids:
                self.lineage.pop(o, None)
                self.store.reset_pending(o)
            spec.finished, spec.lease = False, None
            self.task_event(spec, te.PENDING)
            self._submit_on_loop(spec)
        fut = self.loop.create_future()
        if self.store.add_waiter(oid, lambda: self.on_loop(lambda: fut.done() or fut.set_result(None))):
            await fut

    def on_node_dead(self, conn: Connection, msg: dict, bufs: list) -> None:
        """A node was declared dead (its node manager stopped answering, perhaps cut off by a
        partition): connections to its workers may never close by themselves, so drop them; their
        tasks are retried and their actors' calls wait for the restart, as when a worker dies."""
        node_id = msg["node_id"]
        self._forget_leases_on(node_id)
        nm = self.conns.get(msg.get("address", ""))
        if nm is not None:  # lease requests waiting there: asked again of our own node
            nm.abort(f"node {node_id[:8]} was declared dead")
        for sq in self.queues.values():
            for lease in list(sq.leases):
                if lease.node_id == node_id:
                    lease.conn.abort(f"node {node_id[:8]} was declared dead")
        for ch in self.actors.values():
            if ch.node_id == node_id and ch.conn is not None:
                ch.conn.abort(f"node {node_id[:8]} was declared dead")

    def _forget_leases_on(self, node_id: str) -> None:
        """Workers leased on a node believed gone take no more tasks (their connections may not
        have closed yet). They are handed back too: if the node is in fact alive (a reader could not
        pull from it for another reason), a worker kept leased would hold its resources forever."""
        for sq in self.queues.values():
            for lease in [x for x in sq.leases if x.node_id == node_id and x.busy is None]:
                if lease.idle_handle is not None:
                    lease.idle_handle.cancel()
                self._return_lease(lease)

    async def _recover(self, ref: ObjectRef, lost_node: str, why_lost: str = "") -> None:
        if ref._owner == self.address:
            await self.reconstruct(ref._id, lost_node, why_lost)
            return
        try:
            conn = await self.get_conn(ref._owner)
            reply, bufs = await conn.request({"op": "recover_object", "o": ref._id, "node": lost_node,
                                              "why": why_lost}, timeout=None)
        except (ConnectionError, OSError) as e:
            self.store.set_error(ref._id, OwnerDiedError(ref.hex(), f"its copy was lost with node {lost_node[:8]} "
                                                         f"and its owner {ref._owner} is unreachable ({e})"))
            return
        self.store.reset_pending(ref._id)
        self._apply_object_reply(ref._id, reply, bufs)

    async def on_recover_object(self, conn: Connection, msg: dict, bufs: list) -> Any:
        await self.reconstruct(msg["o"], msg["node"], msg.get("why", ""))
        return self._object_reply(msg["o"])

    def on_infeasible(self, conn: Connection, msg: dict, bufs: list) -> None:
        """A lease request of ours can never be granted as the cluster is: say so where the
        waiting tasks were submitted (each notebook cell once), else once in this process."""
        demand = {k: float(v) for k, v in (msg.get("demand") or {}).items()}
        queues = [sq for sq in self.queues.values() if sq.demand == demand]
        for sq in queues:
            sq.infeasible = msg["text"]
            self._say_infeasible(sq)
        if not any(s.context is not None for sq in queues for s in sq.queue):
            if (msg["text"], None) not in self._infeasible_warned:
                self._infeasible_warned.add((msg["text"], None))
                logger.warning(msg["text"])

    def _say_infeasible(self, sq: SchedulingQueue) -> None:
        """Tell each notebook cell with a task waiting in `sq` why it waits (once per cell)."""
        for spec in sq.queue:
            key = (sq.infeasible, json.dumps(spec.cell, sort_keys=True, default=str))
            if spec.context is not None and key not in self._infeasible_warned:
                self._infeasible_warned.add(key)
                output.in_context(spec, logger.warning, sq.infeasible)

    # -- task output ---------------------------------------------------------------------------
    def on_task_output(self, conn: Connection, msg: dict, bufs: list) -> None:
        handler = self.output_handler
        if handler is not None and handler(msg):
            return
        text = self._prefix_output(msg)
        spec = self.tasks.get(return_ids(msg["t"], 1)[0])
        if self.mode == "worker":  # up to whoever submitted the task that submitted this one
            if output.forward_child(spec.parent if spec is not None else None, msg["s"], text):
                return
        output.in_context(spec, output.write_stream, msg["s"], text)

    # -- cancel ------------------------------------------------------------------------------
    def cancel(self, ref: ObjectRef, force: bool, recursive: bool) -> None:
        self.on_loop(self._cancel_on_loop, ref._id, force, recursive)

    def _cancel_on_loop(self, oid: bytes, force: bool, recursive: bool) -> None:
        spec = self.tasks.get(oid)
        if spec is None or spec.finished:
            return
        spec.cancelled = True
        if spec.actor_id:
            ch = self.actor_channel(spec.actor_id)
            with ch.lock:
                if spec in ch.queue:
                    ch.queue.remove(spec)
                    self._finish_task(spec, error=TaskCancelledError(spec.task_id.hex()))
                elif ch.conn is not None and not ch.conn.closed:
                    ch.conn.send({"op": "cancel", "t": spec.task_id, "force": False, "recursive": recursive})
            return
        sq = self.queues.get(spec.sched_key)
        if spec.lease is None or spec.lease.busy is not spec:
            if sq is not None and spec in sq.queue:
                sq.queue.remove(spec)
            self._finish_task(spec, error=TaskCancelledError(spec.task_id.hex()))
            return
        lease = spec.lease
        if force:
            if not lease.nm.closed:
                lease.nm.send({"op": "kill_worker", "worker_id": lease.worker_id})
        else:
            lease.conn.send({"op": "cancel", "t": spec.task_id, "recursive": recursive})

    def on_cancel_task(self, conn: Connection, msg: dict, bufs: list) -> dict:
        """Cancel asked for by task id through the control store (state API, lab extension)."""
        spec = self.tasks.get(return_ids(msg["t"], 1)[0])
        if spec is None or spec.finished:
            return {"cancelled": False}
        self._cancel_on_loop(spec.return_ids[0], bool(msg.get("force")), True)
        return {"cancelled": True}

    def cancel_children(self, parent_task_id: bytes) -> None:
        """Cancel tasks this process submitted while running `parent_task_id` (recursive cancel)."""
        for oid, spec in list(self.tasks.items()):
            if getattr(spec, "parent", None) == parent_task_id:
                self._cancel_on_loop(oid, False, True)

    # -- placement groups ------------------------------------------------------------------------
    def placement_group_ready(self, pg: Any) -> ObjectRef:
        """An owned ref that the control store resolves when the group is created."""
        oid = ObjectID.new()
        self.store.create_pending(oid)
        ref = ObjectRef(oid, self.address)

        async def wait() -> None:
            try:
                reply, _ = await self.gcs_request({"op": "wait_pg", "pg_id": pg.id, "timeout": None},
                                                  timeout=10 ** 9)
                if reply["ready"]:
                    so = serialize(pg)
                    self.store.set_inline(oid, so.meta, [bytes(b) for b in so.buffers], [])
                else:
                    self.store.set_error(oid, PlacementGroupError(f"placement group {pg.id[:12]} was removed "
                                                                  "before it was ready"))
            except Exception as e:  # noqa: BLE001 - the control store went away: say so on get()
                self.store.set_error(oid, PlacementGroupError(f"could not learn whether placement group "
                                                              f"{pg.id[:12]} is ready: {e}"))

        self.on_loop(lambda: self.spawn(wait()))
        return ref

    # -- task events -------------------------------------------------------------------------
    def task_event(self, spec: TaskSpec, state: str, extra: Any = None) -> None:
        """Record a task's state change (any thread); sent to the control store in batches."""
        if self.config.task_events_interval_s <= 0:
            return
        self.task_events.record(spec, state, extra)
        if not self._events_armed and not self.closed:
            self._events_armed = True
            self.loop.call_soon_threadsafe(self._arm_event_flush)

    def _arm_event_flush(self) -> None:
        self.loop.call_later(self.config.task_events_interval_s, lambda: self.spawn(self.flush_task_events()))

    async def flush_task_events(self) -> None:
        self._events_armed = False
        rows = self.task_events.drain(self.node_id, self.job_id)
        if not rows or self.closed:
            return
        try:
            gcs = await self.ensure_gcs()
            gcs.send({"op": "task_events", "tasks": rows})
        except Exception as e:  # the state API is best effort; the tasks themselves are unaffected
            logger.debug("could not report task events: %s", e)

    # -- application metrics (runtime.util.metrics) ---------------------------------------------
    def _metrics_dirty(self) -> None:
        """A metric changed (any thread): report the registry to the node manager in a while."""
        if not self.closed and self.config.metrics_report_interval_s > 0:
            self.loop.call_soon_threadsafe(self.loop.call_later, self.config.metrics_report_interval_s,
                                           self.report_metrics)

    def report_metrics(self) -> None:
        families = metrics_registry.snapshot()
        if families and self.nm is not None and not self.nm.closed:
            self.nm.send({"op": "metrics_report", "families": families})

    # -- actors -------------------------------------------------------------------------------
    def actor_channel(self, actor_id: str, max_task_retries: int = 0) -> ActorChannel:
        ch = self.actors.get(actor_id)
        if ch is None:  # setdefault: the caller's thread may create it at the same time
            ch = self.actors.setdefault(actor_id, ActorChannel(actor_id, max_task_retries))
        return ch

    def submit_actor_task(self, spec: TaskSpec, so: SerializedObject, deps: list[ObjectRef],
                          max_task_retries: int) -> list[ObjectRef]:
        spec.max_retries = max_task_retries
        refs = self._attach_args(spec, so, deps)
        ch = self.actor_channel(spec.actor_id, max_task_retries)
        with ch.lock:
            # Fast path: a connected actor with nothing queued ahead gets the call straight from
            # this thread, which saves waking the io thread (about a fifth of a sync call).
            if not (deps or ch.posted or ch.queue or ch.state != "ALIVE" or ch.conn is None or self.closed):
                for oid in spec.return_ids:
                    self.tasks[oid] = spec
                ch.inflight[spec.task_id] = spec
                if self._send_actor_call(ch, spec, ch.conn, threadsafe=True):
                    return refs
                del ch.inflight[spec.task_id]
            ch.posted += 1
        self.post(self._submit_actor_on_loop, spec)
        return refs

    def _send_actor_call(self, ch: ActorChannel, spec: TaskSpec, conn: Connection, threadsafe: bool) -> bool:
        msg, bufs = self._task_message(spec, conn, ch.node_id)
        self.task_event(spec, te.RUNNING, ("", ch.node_id))

        def on_reply(reply: Any, rbufs: Any, err: BaseException | None) -> None:
            self._on_actor_reply(ch, spec, reply, rbufs, err)

        if threadsafe:
            return conn.request_cb_threadsafe(msg, bufs, on_reply)
        conn.request_cb(msg, bufs, on_reply)
        return True

    def _submit_actor_on_loop(self, spec: TaskSpec) -> None:
        ch = self.actor_channel(spec.actor_id)
        with ch.lock:
            ch.posted -= 1
            for oid in spec.return_ids:
                self.tasks[oid] = spec
            ch.queue.append(spec)
            if not ch.subscribed:
                ch.subscribed = True
                self.spawn(self._subscribe_actor(ch))
            self._flush_actor(ch)

    def subscribe_actor_nowait(self, actor_id: str, max_task_retries: int) -> None:
        def go() -> None:
            ch = self.actor_channel(actor_id, max_task_retries)
            if not ch.subscribed:
                ch.subscribed = True
                self.spawn(self._subscribe_actor(ch))
        self.on_loop(go)

    async def _subscribe_actor(self, ch: ActorChannel) -> None:
        try:
            try:
                reply, _ = await self.gcs_request({"op": "subscribe_actor", "actor_id": ch.actor_id})
            except ConnectionError:  # the control store went away mid-request: once more, reconnecting
                reply, _ = await self.gcs_request({"op": "subscribe_actor", "actor_id": ch.actor_id})
        except Exception as e:
            ch.state, ch.reason = "DEAD", f"the control store could not be reached: {e}"
            self._flush_actor(ch)
            return
        self._apply_actor_state(ch, reply)

    def on_actor_update(self, conn: Connection, msg: dict, bufs: list) -> None:
        ch = self.actors.get(msg["actor_id"])
        if ch is not None:
            self._apply_actor_state(ch, msg)

    def _apply_actor_state(self, ch: ActorChannel, msg: dict) -> None:
        # A subscribe reply resumes its coroutine a loop turn after it arrives, so it can be
        # older than an actor_update already applied: only ever move forward.
        with ch.lock:
            if ch.state == "DEAD" or msg["version"] < ch.version:
                return
            ch.version = msg["version"]
            ch.num_restarts = msg["num_restarts"]
            ch.state, ch.reason = msg["state"], msg.get("reason", "")
            if msg.get("address") and msg["address"] != ch.address:
                ch.address, ch.conn = msg["address"], None
            ch.node_id = msg.get("node_id", "")
            self._flush_actor(ch)

    def _flush_actor(self, ch: ActorChannel) -> None:
        with ch.lock:
            self._flush_actor_locked(ch)

    def _flush_actor_locked(self, ch: ActorChannel) -> None:
        if ch.state == "DEAD":
            err = ActorDiedError(ch.actor_id, ch.reason)
            while ch.queue:
                self._finish_task(ch.queue.popleft(), error=err)
            return
        if ch.state != "ALIVE" or not ch.address:
            return
        if ch.conn is None or ch.conn.closed:
            if not ch.connecting:
                ch.connecting = True
                self.spawn(self._connect_actor(ch))
            return
        while ch.queue:
            spec = ch.queue[0]
            if spec.cancelled:
                ch.queue.popleft()
                continue
            if any(r._owner == self.address and not self.store.ready(r._id) for r in spec.deps):
                self._when_deps_ready(spec, lambda s: self._flush_actor(ch))
                return
            ch.queue.popleft()
            err = self._dep_error(spec)
            if err is not None:
                self._finish_task(spec, error=err)
                continue
            ch.inflight[spec.task_id] = spec
            self._send_actor_call(ch, spec, ch.conn, threadsafe=False)

    async def _connect_actor(self, ch: ActorChannel) -> None:
        address = ch.address
        try:
            conn = await self.get_conn(address)
        except Exception:
            conn = None
        with ch.lock:
            ch.connecting = False
            if ch.address != address:
                self._flush_actor(ch)
                return
            if conn is None:
                ch.state = "UNKNOWN"  # wait for the control store to say what happened
                return
            ch.conn = conn
            self._flush_actor(ch)

    def _on_actor_reply(self, ch: ActorChannel, spec: TaskSpec, reply: dict, bufs: list,
                        err: BaseException | None) -> None:
        if err is not None:
            return  # connection lost: handled by _actor_conn_lost
        if reply.get("actor_dead"):
            ch.inflight.pop(spec.task_id, None)
            self._finish_task(spec, error=ActorDiedError(ch.actor_id, reply["actor_dead"]))
            return
        self._apply_results(spec, reply, bufs, ch.address)

    def _actor_conn_lost(self, ch: ActorChannel) -> None:
        with ch.lock:
            self._actor_conn_lost_locked(ch)

    def _actor_conn_lost_locked(self, ch: ActorChannel) -> None:
        ch.conn = None
        ch.address = ""
        if ch.state == "ALIVE":
            ch.state = "UNKNOWN"
        retry = []
        for spec in list(ch.inflight.values()):
            ch.inflight.pop(spec.task_id, None)
            if spec.max_retries != 0 and not spec.cancelled:
                spec.max_retries -= 1
                retry.append(spec)
            else:
                reason = ch.reason or "the actor's process died while running this call (max_task_retries=0)"
                self._finish_task(spec, error=ActorDiedError(ch.actor_id, reason))
        ch.queue.extendleft(reversed(retry))
        self._flush_actor(ch)

    def handle_out_of_scope(self, actor_id: str) -> None:
        """Called from ActorHandle.__del__: only schedules (see defer_remove_local)."""
        if not self.closed:
            self.loop.call_soon_threadsafe(self._handle_out_of_scope, actor_id)

    def _handle_out_of_scope(self, actor_id: str) -> None:
        def go() -> None:
            ch = self.actors.get(actor_id)
            if ch is None:
                ch = self.actor_channel(actor_id)
            ch.handle_gone = True
            self._maybe_kill_out_of_scope(ch)
        go()

    def _maybe_kill_out_of_scope(self, ch: ActorChannel) -> None:
        if ch.handle_gone and not ch.queue and not ch.inflight and ch.state != "DEAD":
            ch.state = "DEAD"
            ch.reason = "all handles to it went out of scope"

            async def kill() -> None:
                try:
                    await self.gcs_request({"op": "kill_actor", "actor_id": ch.actor_id, "no_restart": True})
                except Exception:
                    pass

            self.spawn(kill())

    # -- shutdown ------------------------------------------------------------------------------
    async def close_async(self) -> None:
        self.closed = True
        rows = self.task_events.drain(self.node_id, self.job_id)
        if rows and self.gcs is not None and not self.gcs.closed:
            self.gcs.send({"op": "task_events", "tasks": rows})  # last states, flushed by close()
        self.report_metrics()  # last values
        for c in list(self.conns.values()) + [self.nm, self.gcs]:
            if c is not None:
                c.close()
        if getattr(self, "_server", None) is not None:
            self._server.close()

    def shutdown(self) -> None:
        if self.thread is not None and self.thread.is_alive():
            try:
                self.run_sync(self.close_async(), timeout=5)
            except Exception:
                pass
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=5)
        try:
            os.unlink(self.address[5:])
        except OSError:
            pass


_BACKGROUND: set = set()
_RUNTIME_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def call_site() -> str:
    """Where user code called into the runtime: the innermost frame outside this package
    ("path:line in function"), as `runtime memory --group-by STACK_TRACE` shows it."""
    frame = sys._getframe(1)
    while frame is not None and frame.f_code.co_filename.startswith(_RUNTIME_DIR):
        frame = frame.f_back
    if frame is None:
        return "(unknown)"
    return f"{frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_name}"


def _pickle_error(err: BaseException | None) -> bytes:
    try:
        return pickle.dumps(err)
    except Exception:
        return pickle.dumps(ObjectLostError("", f"{type(err).__name__}: {err}"))
