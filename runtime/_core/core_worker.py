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
    GetTimeoutError,
    ObjectLostError,
    OwnerDiedError,
    PlacementGroupError,
    TaskCancelledError,
    TaskError,
)
from ..node import shm
from ..rpc.connection import Connection, bind_socket, connect, serve, socket_address
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
from .actor_task_submitter import ActorChannel, ActorTaskSubmitter
from .normal_task_submitter import Lease, NormalTaskSubmitter, SchedulingQueue  # noqa: F401 - were defined here
from .object_recovery import ObjectRecovery
from .task_manager import TaskManager
from .task_spec import TaskSpec, return_ids

logger = logging.getLogger("runtime")



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
        # The parts this object wires together, each owning one kind of state:
        self.task_manager = TaskManager(self.store)  # pending tasks, retries, lineage
        self.normal_submitter = NormalTaskSubmitter(self)  # leases, and tasks pushed to leased workers
        self.actor_submitter = ActorTaskSubmitter(self)  # actor calls, per actor
        self.recovery = ObjectRecovery(self)  # rebuilding objects lost with their node
        # The same tables under their old names (api.py's get_task reads `tasks`).
        self.tasks = self.task_manager.tasks  # return object id -> pending spec
        self.lineage = self.task_manager.lineage
        self.queues = self.normal_submitter.queues
        self.actors = self.actor_submitter.actors
        self._posts: collections.deque = collections.deque()
        # ObjectRef.__del__ may run inside any allocation (GC), even while this thread holds
        # one of our locks: it only appends here; the loop applies the decrements.
        self._dead_refs: collections.deque = collections.deque()
        self._dead_refs_scheduled = False
        self._post_lock = threading.Lock()
        self._post_scheduled = False
        self._fetching: set[bytes] = set()
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
                self.actor_submitter.resubscribe()
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
        self.normal_submitter.conn_closed(conn)
        self.actor_submitter.conn_closed(conn)

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
            self.object_cells.pop(oid, None)
            self.object_sites.pop(oid, None)
            freed = self.task_manager.forget(oid)
            if freed is not None:
                self._release_task_args(freed)
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
            self.apply_object_reply(oid, reply, bufs)
        except (ConnectionError, OSError, asyncio.TimeoutError) as e:
            self.store.set_error(oid, OwnerDiedError(oid.hex(), f"its owner {owner} is unreachable ({e}); "
                                                      "the process that created it has exited."))
        except Exception as e:  # noqa: BLE001 - the owner answered with an error
            self.store.set_error(oid, e if isinstance(e, ObjectLostError) else ObjectLostError(oid.hex(), str(e)))
        finally:
            self._fetching.discard(oid)

    def apply_object_reply(self, oid: bytes, reply: dict, bufs: list) -> None:
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
        self.post(self.submit_on_loop, spec)
        return refs

    def submit_actor_task(self, spec: TaskSpec, so: SerializedObject, deps: list[ObjectRef],
                          max_task_retries: int) -> list[ObjectRef]:
        spec.max_retries = max_task_retries
        refs = self._attach_args(spec, so, deps)
        self.actor_submitter.submit(spec, bool(deps), max_task_retries)
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

    def submit_on_loop(self, spec: TaskSpec) -> None:
        self.task_manager.add_pending(spec)
        self.when_deps_ready(spec, self.normal_submitter.enqueue)

    # Dependencies this process owns are waited for here, before a task is queued or an actor
    # call sent; those owned elsewhere the executing worker fetches itself.
    def deps_pending(self, spec: TaskSpec) -> bool:
        return any(r._owner == self.address and not self.store.ready(r._id) for r in spec.deps)

    def when_deps_ready(self, spec: TaskSpec, then: Callable[[TaskSpec], None]) -> None:
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

    def dep_error(self, spec: TaskSpec) -> BaseException | None:
        for r in spec.deps:
            e = self.store.entries.get(r._id)
            if e is not None and e.state == ERROR and r._owner == self.address:
                return e.error
        return None

    def task_message(self, spec: TaskSpec, conn: Connection, node_id: str) -> tuple[dict, list]:
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

    # -- task results ------------------------------------------------------------------------
    def apply_results(self, spec: TaskSpec, reply: dict, bufs: list, worker_address: str) -> None:
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
        self._task_finished(spec, _reply_error(reply))

    def finish_task(self, spec: TaskSpec, *, error: BaseException) -> None:
        for oid in spec.return_ids:
            self.store.set_error(oid, error)
        self._task_finished(spec, error)

    def _task_finished(self, spec: TaskSpec, error: BaseException | None = None) -> None:
        if spec.finished:
            return
        state = te.FINISHED if error is None else (
            te.CANCELLED if isinstance(error, TaskCancelledError) else te.FAILED)
        self.task_event(spec, state, error)
        if self.task_manager.finish(spec, error):
            self._release_task_args(spec)
        if spec.actor_id:
            self.actor_submitter.task_finished(spec)

    def _release_task_args(self, spec: TaskSpec) -> None:
        for r in spec.deps:
            self.refs.remove_submitted(r._id)
        for r in spec.nested:
            self.refs.remove_submitted(r._id)
        spec.deps, spec.nested = [], []

    # -- lost objects and nodes ----------------------------------------------------------------
    async def reconstruct(self, oid: bytes, lost_node: str, why_lost: str = "") -> None:
        await self.recovery.reconstruct(oid, lost_node, why_lost)

    async def _recover(self, ref: ObjectRef, lost_node: str, why_lost: str = "") -> None:
        await self.recovery.recover(ref, lost_node, why_lost)

    async def on_recover_object(self, conn: Connection, msg: dict, bufs: list) -> Any:
        await self.recovery.reconstruct(msg["o"], msg["node"], msg.get("why", ""))
        return self._object_reply(msg["o"])

    def on_node_dead(self, conn: Connection, msg: dict, bufs: list) -> None:
        """A node was declared dead (its node manager stopped answering, perhaps cut off by a
        partition): connections to its workers may never close by themselves, so drop them; their
        tasks are retried and their actors' calls wait for the restart, as when a worker dies."""
        node_id = msg["node_id"]
        why = f"node {node_id[:8]} was declared dead"
        self.normal_submitter.forget_leases_on(node_id)
        nm = self.conns.get(msg.get("address", ""))
        if nm is not None:  # lease requests waiting there: asked again of our own node
            nm.abort(why)
        self.normal_submitter.abort_leases_on(node_id, why)
        self.actor_submitter.abort_conns_on(node_id, why)

    def on_infeasible(self, conn: Connection, msg: dict, bufs: list) -> None:
        demand = {k: float(v) for k, v in (msg.get("demand") or {}).items()}
        self.normal_submitter.on_infeasible(demand, msg["text"])

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
        spec = self.task_manager.pending(oid)
        if spec is None:
            return
        spec.cancelled = True
        if spec.actor_id:
            self.actor_submitter.cancel(spec, recursive)
        else:
            self.normal_submitter.cancel(spec, force, recursive)

    def on_cancel_task(self, conn: Connection, msg: dict, bufs: list) -> dict:
        """Cancel asked for by task id through the control store (state API, lab extension)."""
        spec = self.task_manager.pending(return_ids(msg["t"], 1)[0])
        if spec is None:
            return {"cancelled": False}
        self._cancel_on_loop(spec.return_ids[0], bool(msg.get("force")), True)
        return {"cancelled": True}

    def cancel_children(self, parent_task_id: bytes) -> None:
        """Cancel tasks this process submitted while running `parent_task_id` (recursive cancel)."""
        for oid in self.task_manager.children_of(parent_task_id):
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

    # -- actors (ActorTaskSubmitter does the work) -------------------------------------------------
    def actor_channel(self, actor_id: str, max_task_retries: int = 0) -> ActorChannel:
        return self.actor_submitter.channel(actor_id, max_task_retries)

    def subscribe_actor_nowait(self, actor_id: str, max_task_retries: int) -> None:
        self.actor_submitter.subscribe_nowait(actor_id, max_task_retries)

    def on_actor_update(self, conn: Connection, msg: dict, bufs: list) -> None:
        self.actor_submitter.on_update(msg)

    def handle_out_of_scope(self, actor_id: str) -> None:
        """Called from ActorHandle.__del__: only schedules (see defer_remove_local)."""
        if not self.closed:
            self.loop.call_soon_threadsafe(self.actor_submitter.handle_out_of_scope, actor_id)

    # -- shutdown ------------------------------------------------------------------------------
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


def _reply_error(reply: dict) -> BaseException | None:
    """The error a task's reply carries, for its task event."""
    for kind, meta, *_ in reply["res"]:
        if kind == "e":
            try:
                return pickle.loads(meta)
            except Exception as e:  # the owner already reported it; the event only summarises
                return e
    return None
