"""The core worker: the part of every driver and worker process that owns objects,
counts references, stores small values, submits tasks and actor calls, and serves
other processes' requests for the objects it owns.

CoreWorker wires together the parts that own each kind of state, and keeps the process's
connections, its io loop and the handlers of its server:

  ownership.py              objects we own (put, release) and our side of those we borrow
  reference_table.py        who refers to each object (counting only)
  memory_store.py           the values themselves, and who waits for them
  object_reader.py          get / wait: fetching from owners, mapping shared memory
  task_manager.py           pending tasks, their retries, and lineage kept to rebuild results
  dependency_resolver.py    a task's object arguments: waiting for them, inlining small ones
  normal_task_submitter.py  leasing workers and pushing tasks to them
  actor_task_submitter.py   calls to actors, in order, across restarts
  object_recovery.py        rebuilding an object lost with its node
  task_events.py            task state changes, batched for the state API

The parts reach the network and each other through this object (their `host`); none of them
imports this module except for type checking, so the package's imports stay acyclic.

Threads: user code calls in from any thread; all I/O happens on one event loop running
in the daemon thread `runtime-io`. Calls cross over with `call_soon_threadsafe` (for
submissions, batched) or `run_coroutine_threadsafe` (for calls that need an answer).
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import functools
import logging
import os
import pickle
import threading
import time
from concurrent.futures import Future as ConcurrentFuture
from typing import Any, Callable

from ..config import SystemConfig
from ..exceptions import PlacementGroupError, TaskCancelledError
from ..rpc.connection import Connection, bind_socket, connect, serve, socket_address
from ..serialization.core import SerializedObject, serialize
from ..worker import output
from ..worker.output import LinePrefixer
from .ids import ObjectID
from .memory_store import MemoryStore
from .metrics_registry import registry as metrics_registry
from .object_ref import ObjectRef
from .private_files import make_private_dir
from . import task_events as te
from .actor_task_submitter import ActorChannel, ActorTaskSubmitter
from .dependency_resolver import DependencyResolver
from .normal_task_submitter import Lease, NormalTaskSubmitter, SchedulingQueue  # noqa: F401 - were defined here
from .object_reader import ObjectReader
from .ownership import Ownership, call_site
from .object_recovery import ObjectRecovery
from .task_manager import TaskManager
from .task_spec import TaskSpec, return_ids

logger = logging.getLogger("runtime")



TASK_EVENTS_FLUSH_AT = 500  # task state changes recorded before a batch goes without waiting for the interval


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
        self.ownership = Ownership(self)  # what we own and borrow: creating, releasing, answering for it
        self.refs = self.ownership.refs
        self.loop = asyncio.new_event_loop()
        self.thread: threading.Thread | None = None
        self.handlers: dict[str, Callable] = {
            "get_object": self.ownership.on_get_object, "add_borrower": self.ownership.on_add_borrower,
            "remove_borrower": self.ownership.on_remove_borrower,
            "release_contained": self.ownership.on_release_contained,
            "list_refs": self.ownership.on_list_refs, "actor_update": self.on_actor_update, "infeasible": self.on_infeasible,
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
        self.resolver = DependencyResolver(self.store, self.address, self.on_loop)  # arguments that are objects
        self.normal_submitter = NormalTaskSubmitter(self)  # leases, and tasks pushed to leased workers
        self.actor_submitter = ActorTaskSubmitter(self)  # actor calls, per actor
        self.reader = ObjectReader(self)  # get, wait, and fetching what others own
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
        self.current_task_name = ""
        self.current_task_id = b""
        self.current_actor_id = ""
        self.actor_reconstructed = False
        self.gpu_ids: list[int] = []
        self.assigned_resources: dict = {}
        self.blocked_hook: Callable[[bool], None] | None = None  # set by the worker executor
        self.closed = False
        # The notebook cell (dict: notebook, cell_id, execution_count) that what this process
        # submits now belongs to: set by the notebook extension in a driver, and from the
        # task being run in a worker, so child tasks carry their parent's cell.
        self.current_cell: dict | None = None
        self.current_pg: list | None = None  # placement group the running task captures children into
        self.object_cells = self.ownership.object_cells  # owned object -> the cell that created it
        self.object_sites = self.ownership.object_sites  # owned object -> where it was created, when recorded
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
        self._wake_loop()

    def _post_submission(self, spec: TaskSpec) -> None:
        """post(submit_on_loop, spec), as the spec alone: a burst of submissions waits here while
        the io thread catches up, and a (method, args) pair per task was ~150 bytes of the
        driver's peak per queued task."""
        self._posts.append(spec)
        self._wake_loop()

    def _wake_loop(self) -> None:
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
            item = posts.popleft()
            spec = type(item) is TaskSpec
            fn = self.submit_on_loop if spec else item[0]
            try:
                fn(item) if spec else fn(*item[1])
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

    # -- objects: put (Ownership does the work) -----------------------------------------------
    def put(self, value: Any, *, _owner: str | None = None) -> ObjectRef:
        return self.ownership.put(value)

    def put_args(self, so: SerializedObject) -> ObjectRef:
        return self.ownership.put_args(so)

    def store_serialized(self, oid: bytes, so: SerializedObject, nested: list, owner_wid: str) -> tuple[str, Any]:
        return self.ownership.store_serialized(oid, so, nested, owner_wid)

    def write_shm(self, oid: bytes, so: SerializedObject, owner_wid: str) -> int:
        return self.ownership.write_shm(oid, so, owner_wid)

    # -- objects: get / wait (ObjectReader does the work) ----------------------------------
    def get(self, refs: list[ObjectRef], timeout: float | None = None) -> list[Any]:
        return self.reader.get(refs, timeout)

    def wait(self, refs: list[ObjectRef], num_returns: int, timeout: float | None) -> tuple[list, list]:
        return self.reader.wait(refs, num_returns, timeout)

    def get_future(self, ref: ObjectRef) -> ConcurrentFuture:
        return self.reader.get_future(ref)

    def materialize(self, ref: ObjectRef) -> Any:
        return self.reader.materialize(ref)

    def apply_object_reply(self, oid: bytes, reply: dict, bufs: list) -> None:
        self.reader.apply_object_reply(oid, reply, bufs)

    # -- task submission -------------------------------------------------------------------
    def prepare_args(self, args: tuple, kwargs: dict, what: str) -> tuple[SerializedObject, list[ObjectRef]]:
        from .task_spec import ArgRef
        if not args and not kwargs:  # most calls of a no-argument function: one shared encoding, no lists
            return _no_args(), ()
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
        self._post_submission(spec)
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
            spec.nested = list(so.nested_refs) if so.nested_refs else ()
        spec.deps = deps
        for r in deps:
            self.refs.add_submitted(r._id, r._owner)
        for r in spec.nested:
            self.refs.add_submitted(r._id, r._owner)
        refs = [ObjectRef(oid, self.address) for oid in spec.return_ids]
        for oid in spec.return_ids:
            self.store.create_pending(oid)
        return refs

    def submit_on_loop(self, spec: TaskSpec) -> None:
        self.task_manager.add_pending(spec)
        self.when_deps_ready(spec, self.normal_submitter.enqueue)

    # Dependencies (DependencyResolver; the submitters reach it through these)
    def deps_pending(self, spec: TaskSpec) -> bool:
        return self.resolver.pending(spec)

    def when_deps_ready(self, spec: TaskSpec, then: Callable[[TaskSpec], None]) -> None:
        self.resolver.when_ready(spec, then)

    def dep_error(self, spec: TaskSpec) -> BaseException | None:
        return self.resolver.error(spec)

    def task_message(self, spec: TaskSpec, conn: Connection, node_id: str) -> tuple[dict, list]:
        """The push message; a dependency in shared memory on the worker's own node (`node_id`)
        is mapped there directly, others the worker fetches (and pulls) itself."""
        deps, bufs = self.resolver.message_deps(spec, node_id)
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
                    self.ownership.free_shm(oid, reply.get("node", self.node_id))
                pos += nbufs
                for noid, _owner, holder in nested or ():
                    self.ownership.send_owner(holder, {"op": "release_contained", "o": noid, "x": oid})
                continue
            nested = [tuple(n) for n in nested] if nested else ()
            if kind == "i":
                self.store.set_inline(oid, meta, [bytes(b) for b in bufs[pos:pos + nbufs]] if nbufs else (), nested)
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
            self.release_task_args(spec)
        if spec.actor_id:
            self.actor_submitter.task_finished(spec)

    def release_task_args(self, spec: TaskSpec) -> None:
        for r in spec.deps:
            self.refs.remove_submitted(r._id)
        for r in spec.nested:
            self.refs.remove_submitted(r._id)
        spec.deps, spec.nested = (), ()

    # -- lost objects and nodes ----------------------------------------------------------------
    async def reconstruct(self, oid: bytes, lost_node: str, why_lost: str = "") -> None:
        await self.recovery.reconstruct(oid, lost_node, why_lost)

    async def _recover(self, ref: ObjectRef, lost_node: str, why_lost: str = "") -> None:
        await self.recovery.recover(ref, lost_node, why_lost)

    async def on_recover_object(self, conn: Connection, msg: dict, bufs: list) -> Any:
        await self.recovery.reconstruct(msg["o"], msg["node"], msg.get("why", ""))
        return self.ownership.object_reply(msg["o"])

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
        events = self.task_events.events
        self.task_events.record(spec, state, extra)
        if not self._events_armed and not self.closed:
            self._events_armed = True
            self.loop.call_soon_threadsafe(self._arm_event_flush)
        elif len(events) == TASK_EVENTS_FLUSH_AT and not self.closed:
            # A burst: send what is recorded now rather than at the interval. The rows of one
            # batch are built at once (about 1 KB a task), and 100,000 tasks submitted in a few
            # seconds made batches of ~15,000 rows, ~140 bytes per pending task of the driver's peak.
            self.loop.call_soon_threadsafe(self._flush_burst)

    def _arm_event_flush(self) -> None:
        self.loop.call_later(self.config.task_events_interval_s, lambda: self.spawn(self.flush_task_events()))

    def _flush_burst(self) -> None:
        """Send the recorded events now, on a connection already open (else the interval's flush,
        armed already, connects and sends them); a plain call, not a task that shutdown could
        find pending."""
        gcs = self.gcs
        if gcs is None or gcs.closed or self.closed:
            return
        rows = self.task_events.drain(self.node_id, self.job_id)
        if rows:
            try:
                gcs.send({"op": "task_events", "tasks": rows})
            except Exception as e:  # noqa: BLE001 - the state API is best effort
                logger.debug("could not report task events: %s", e)

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
def _reply_error(reply: dict) -> BaseException | None:
    """The error a task's reply carries, for its task event."""
    for kind, meta, *_ in reply["res"]:
        if kind == "e":
            try:
                return pickle.loads(meta)
            except Exception as e:  # the owner already reported it; the event only summarises
                return e
    return None


@functools.cache
def _no_args() -> SerializedObject:
    """The arguments of a call without any, serialized once: a pending task without arguments
    then holds no bytes of its own for them (about 280 bytes each otherwise)."""
    return serialize(([], {}))
