"""Runs tasks and actor methods in a worker process.

Normal tasks and calls on a plain (max_concurrency=1) actor run on the main thread, in
arrival order, so a cancel can interrupt them with SIGINT. Threaded actors run calls on
a pool of `max_concurrency` threads; async actors run them as coroutines on their own
event loop, at most `max_concurrency` at once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import inspect
import logging
import os
import queue
import signal
import sys
import threading
import traceback
from typing import Any, Iterator

import cloudpickle

from .._core.core_worker import CoreWorker
from .._core.metrics_registry import registry as metrics_registry
from .._core.object_ref import ObjectRef
from .._core.task_spec import ArgRef
from ..exceptions import TaskCancelledError
from ..node import shm
from ..rpc.connection import DEFERRED, Connection
from ..serialization.core import deserialize, serialize
from ..serialization.errors import capture_task_error
from . import output


@contextlib.contextmanager
def _task_scope() -> Iterator[None]:
    """What a task changes in its process — environment variables, cwd, sys.path — is undone
    when it ends, so the next task on this worker starts as the runtime_env says, not as the
    last task left it. (Actors keep theirs: their state is theirs.) os.environ's underlying
    dict is compared, not os.environ itself: a copy costs about a microsecond."""
    data = getattr(os.environ, "_data", None)
    env = data.copy() if data is not None else dict(os.environ)
    cwd, path = os.getcwd(), list(sys.path)
    try:
        yield
    finally:
        now = data if data is not None else dict(os.environ)
        if now != env:
            decode = getattr(os.environ, "decodekey", lambda k: k)
            decode_value = getattr(os.environ, "decodevalue", lambda v: v)
            for k in [k for k in now if k not in env]:
                del os.environ[decode(k)]
            for k, v in env.items():
                if now.get(k) != v:
                    os.environ[decode(k)] = decode_value(v)
        if sys.path != path:
            sys.path[:] = path
        try:
            if os.getcwd() != cwd:
                os.chdir(cwd)
        except OSError:  # the task removed its cwd
            os.chdir(cwd)


_STOLEN = {"stolen": True}  # the answer to a push given back unstarted: the owner queues it again

# A worker keeps the large shared-memory arguments of its last task mapped for the next task
# (Executor.load_args) while it is this busy, and only for objects at least this large.
KEEP_MAPPINGS_S = 0.05
KEEP_MIN_BYTES = 1 << 20


class Executor:
    def __init__(self, cw: CoreWorker) -> None:
        self.cw = cw
        self.q: queue.SimpleQueue = queue.SimpleQueue()
        self.functions: dict[bytes, Any] = {}
        self.lock = threading.Lock()
        self.running: bytes | None = None  # task id running on the main thread
        self.cancelled: set[bytes] = set()
        # Normal tasks pushed and not started, task id -> (connection, push): the owner may
        # send several at once (pipelining, runtime/_core/normal_task_submitter.py) and take back
        # those not started (`steal`); a task that blocks in get/wait gives them all back, and
        # `holding` sends back those that arrive while it waits.
        self.queued: dict[bytes, tuple[Connection, dict]] = {}
        self.holding = False
        self.main_ident = threading.get_ident()
        self.instance: Any = None
        self.actor_mode = ""
        self.actor_pg: list | None = None  # placement group an actor captures its children into
        self.pool: concurrent.futures.ThreadPoolExecutor | None = None
        # Shared-memory arguments of the last main-thread task, still mapped (see load_args).
        self.kept: dict[bytes, Any] = {}
        self.actor_loop: asyncio.AbstractEventLoop | None = None
        self.actor_sem: asyncio.Semaphore | None = None
        cw.blocked_hook = self._blocked

    def _blocked(self, blocked: bool) -> None:
        if self.running is not None and threading.get_ident() == self.main_ident:
            nm = self.cw.nm
            self.cw.on_loop(nm.send, {"op": "blocked" if blocked else "unblocked"})
            given_back: dict = {}
            with self.lock:
                self.holding = blocked
                if blocked:
                    given_back, self.queued = self.queued, {}
            for conn, push in given_back.values():  # they must not wait behind a task that waits
                conn.reply_threadsafe(push["id"], _STOLEN)

    # -- handlers (io loop thread) -------------------------------------------------------
    def handlers(self) -> dict:
        """The ops a worker serves on top of its core worker's (installed by worker/main.py)."""
        return {"push": self.on_push, "actor_call": self.on_actor_call, "cancel": self.on_cancel,
                "create_actor": self.on_create_actor, "steal": self.on_steal}

    def on_push(self, conn: Connection, msg: dict, bufs: list) -> Any:
        tid = msg.get("t")
        if not isinstance(tid, bytes):
            _malformed(conn, msg, ValueError("a push needs its task id `t` (bytes)"))
            return DEFERRED
        with self.lock:
            if self.holding:
                return _STOLEN
            self.queued[tid] = (conn, msg)
        self.q.put((self._run_task, conn, msg, bufs))
        return DEFERRED

    def on_steal(self, conn: Connection, msg: dict, bufs: list) -> None:
        """The owner takes back tasks it pushed that have not started (one-way)."""
        with self.lock:
            taken = [self.queued.pop(t) for t in msg["t"] if t in self.queued]
        for c, push in taken:
            c._reply(push["id"], _STOLEN)

    def on_create_actor(self, conn: Connection, msg: dict, bufs: list) -> Any:
        self.q.put((self._create_actor, conn, msg, bufs))
        return DEFERRED

    def on_actor_call(self, conn: Connection, msg: dict, bufs: list) -> Any:
        if self.actor_mode == "async":
            asyncio.run_coroutine_threadsafe(self._async_call(conn, msg, bufs), self.actor_loop)
        elif self.actor_mode == "threaded":
            self.pool.submit(self._run_call, conn, msg, bufs)
        else:
            self.q.put((self._run_call, conn, msg, bufs))
        return DEFERRED

    def on_cancel(self, conn: Connection, msg: dict, bufs: list) -> None:
        tid = msg["t"]
        with self.lock:
            waiting = self.queued.pop(tid, None)
            if waiting is not None:  # pushed, not started: answered now, never run
                c, push = waiting
                c._reply(push["id"], self._error_results(push, TaskCancelledError(tid.hex())))
            elif self.running == tid:
                self.cancelled.add(tid)
                signal.pthread_kill(self.main_ident, signal.SIGINT)
            else:
                self.cancelled.add(tid)
        if msg.get("recursive", True):
            self.cw.cancel_children(tid)

    # -- main thread -----------------------------------------------------------------------
    def run_forever(self) -> None:
        while True:
            try:
                if self.kept:
                    try:
                        fn, conn, msg, bufs = self.q.get(timeout=KEEP_MAPPINGS_S)
                    except queue.Empty:
                        self.kept = {}  # idle: the mappings go, and with them our hold on the files
                        continue
                else:
                    fn, conn, msg, bufs = self.q.get()
                fn(conn, msg, bufs)
            except KeyboardInterrupt:
                continue  # a cancel that arrived just after its task finished
            except Exception as e:  # noqa: BLE001 - a malformed request fails alone, not the worker
                _malformed(conn, msg, e)

    def _reply(self, conn: Connection, msg: dict, body: dict, bufs: list) -> None:
        conn.reply_threadsafe(msg["id"], (body, bufs))

    def _run_task(self, conn: Connection, msg: dict, bufs: list) -> None:
        with self.lock:
            if self.queued.pop(msg["t"], None) is None:
                return  # taken back or cancelled before it started: already answered
        fid = msg["f"]
        fn = self.functions.get(fid)
        if fn is None:
            try:
                fn = self.functions[fid] = cloudpickle.loads(msg["fn"])
            except Exception as e:  # noqa: BLE001 - a module the worker cannot import: the task fails, not the worker
                if hasattr(e, "add_note"):
                    e.add_note(f"The worker could not load the function `{msg['n']}`: it refers to a module by "
                               "name that this worker cannot import. Make it importable on the workers "
                               "(install it, set PYTHONPATH, or ship it with runtime_env), or define what the "
                               "task uses in the driver's script or notebook.")
                err = capture_task_error(e, msg["n"], os.getpid(), self.cw.node_id)
                self._reply(conn, msg, *self._error_results(msg, err))
                return
        with _task_scope():
            self._execute(conn, msg, bufs, fn, main_thread=True)

    def _run_call(self, conn: Connection, msg: dict, bufs: list) -> None:
        method = getattr(self.instance, msg["m"])
        self._execute(conn, msg, bufs, method, main_thread=self.actor_mode == "")

    def _execute(self, conn: Connection, msg: dict, bufs: list, fn: Any, main_thread: bool) -> None:
        cw = self.cw
        tid = msg["t"]
        if tid in self.cancelled:
            self._reply(conn, msg, *self._error_results(msg, TaskCancelledError(tid.hex())))
            return
        self._enter(msg)
        try:
            if main_thread:
                with self.lock:
                    self.running = tid
            with output.captured(conn.send_threadsafe, tid, msg["n"]):
                args, kwargs = self.load_args(msg, bufs, keep=main_thread)
                result = fn(*args, **kwargs)
            if main_thread:
                with self.lock:
                    self.running = None
            body, out = self._pack_results(msg, result)
        except KeyboardInterrupt:
            self.running = None
            body, out = self._error_results(msg, TaskCancelledError(tid.hex()))
        except SystemExit as e:  # the task asked the worker to exit (as Ray does: the worker dies)
            os._exit(e.code if isinstance(e.code, int) else 1)
        except BaseException as e:  # noqa: BLE001 - every user error goes back to the owner
            self.running = None
            err = capture_task_error(e, msg["n"], os.getpid(), cw.node_id)
            body, out = self._error_results(msg, err)
        finally:
            if main_thread:
                self.running = None
            self.cancelled.discard(tid)
        self._reply(conn, msg, body, out)
        if metrics_registry.dirty:  # what it recorded goes now: a worker whose owner leaves is stopped
            cw.on_loop(cw.report_metrics)

    def _enter(self, msg: dict) -> None:
        cw = self.cw
        cw.current_task_id = msg["t"]
        cw.current_task_name = msg["n"]
        cw.current_cell = msg.get("cl")
        cw.current_pg = msg.get("pg", self.actor_pg)
        cw.job_id, cw.namespace = msg["job"], msg["ns"]
        gpus = msg.get("gpu")
        if gpus is not None:
            cw.gpu_ids = list(gpus)
            os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in gpus)
        if "res" in msg:
            cw.assigned_resources = msg["res"] or {}

    def load_args(self, msg: dict, bufs: list, keep: bool = False) -> tuple[list, dict]:
        """The task's arguments. `keep` (main thread): large shared-memory arguments stay mapped
        until a task that does not use them, or KEEP_MAPPINGS_S of idleness, so that the next
        task on the same object finds its pages mapped already, as in a Ray worker, which maps
        the store once (pass_100mb_to_10_tasks_s: each new mapping of 100 MiB faults ~4.5 ms)."""
        cw = self.cw
        nb = msg["nb"]
        if msg.get("ar"):
            oid, owner = msg["ar"]
            args, kwargs = cw.get([ObjectRef(oid, owner)])[0]
        else:
            args, kwargs = deserialize(msg["a"], bufs[:nb])
        deps = msg["d"]
        previous, kept = (self.kept if keep else {}), {}
        if keep:
            self.kept = kept  # what this task does not use is let go
        if not deps:
            return args, kwargs
        values = []
        pos = nb
        for kind, oid, owner, meta, n in deps:
            if kind == "i":
                values.append(deserialize(meta, bufs[pos:pos + n]))
                pos += n
            elif kind == "s":
                mapped = previous.get(oid)
                if mapped is None:
                    mapped = shm.map_object(cw.shm_dir, oid)
                if keep and mapped is not None and sum(b.nbytes for b in mapped[1]) >= KEEP_MIN_BYTES:
                    kept[oid] = mapped
                if mapped is None:
                    values.append(cw.get([ObjectRef(oid, owner)])[0])
                else:
                    values.append(deserialize(*mapped))
            else:
                values.append(cw.get([ObjectRef(oid, owner)])[0])
        args = [values[a.index] if isinstance(a, ArgRef) else a for a in args]
        kwargs = {k: values[v.index] if isinstance(v, ArgRef) else v for k, v in kwargs.items()}
        return args, kwargs

    def _pack_results(self, msg: dict, result: Any) -> tuple[dict, list]:
        cw = self.cw
        rids = msg["r"]
        if len(rids) == 1:
            values = [result]
        else:
            try:
                values = list(result)
            except TypeError:
                values = []
            if len(values) != len(rids):
                raise ValueError(f"Task `{msg['n']}` has num_returns={len(rids)} but returned "
                                 f"{type(result).__name__} {result!r:.80}; return a tuple of {len(rids)} values.")
        res, out = [], []
        for oid, value in zip(rids, values):
            so = serialize(value)
            nested = []
            for r in so.nested_refs:
                cw.refs.add_contained(r._id, r._owner, oid)
                nested.append((r._id, r._owner, cw.address))
            if so.total_bytes < cw.config.max_inline_bytes:
                res.append(["i", so.meta, len(so.buffers), nested])
                out.extend(so.buffers)
            else:
                res.append(["s", cw.write_shm(oid, so, msg["ow"]), 0, nested])
        body = {"res": res, "node": cw.node_id}
        caller = msg["oa"]
        borrowed = [oid for oid, e in cw.refs.snapshot() if not e.owned and e.owner == caller]
        if borrowed:
            body["b"] = borrowed
        return body, out

    def _error_results(self, msg: dict, err: BaseException) -> tuple[dict, list]:
        blob = cloudpickle.dumps(err)
        return {"res": [["e", blob, 0, None] for _ in msg["r"]]}, []

    # -- actors ----------------------------------------------------------------------------
    def _create_actor(self, conn: Connection, msg: dict, bufs: list) -> None:
        cw = self.cw
        spec = msg["spec"]
        cw.current_actor_id = msg["actor_id"]
        cw.actor_reconstructed = bool(msg.get("restarted"))
        cw.job_id, cw.namespace = msg["job_id"], msg["namespace"]
        gpus = msg.get("gpus") or []
        cw.gpu_ids = list(gpus)
        if gpus:
            os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in gpus)
        cw.assigned_resources = spec.get("demand") or {}
        cw.current_pg = self.actor_pg = spec.get("pg")
        try:
            cls = cloudpickle.loads(bufs[0])
            call = {"nb": spec["nb"], "a": spec["a"], "d": spec["d"], "ar": spec.get("ar")}
            args, kwargs = self.load_args(call, bufs[1:])
            self.instance = cls(*args, **kwargs)
        except BaseException as e:  # noqa: BLE001 - reported to callers as the actor's death cause
            tb = "".join(traceback.format_exception(type(e), e, e.__traceback__))
            conn.reply_threadsafe(msg["id"], {"init_error": tb})
            return
        concurrency = spec.get("max_concurrency")
        if spec.get("is_async"):
            self.actor_mode = "async"
            self._start_actor_loop(concurrency or 1000)
        elif concurrency and concurrency > 1:
            self.actor_mode = "threaded"
            self.pool = concurrent.futures.ThreadPoolExecutor(concurrency, thread_name_prefix="actor")
        conn.reply_threadsafe(msg["id"], {"ok": True})

    def _start_actor_loop(self, concurrency: int) -> None:
        loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            self.actor_sem = asyncio.Semaphore(concurrency)
            ready.set()
            loop.run_forever()

        threading.Thread(target=run, name="actor-loop", daemon=True).start()
        ready.wait()
        self.actor_loop = loop

    async def _async_call(self, conn: Connection, msg: dict, bufs: list) -> None:
        async with self.actor_sem:
            # This coroutine runs in its own context copy, so the output sink is this call's alone.
            with output.captured(conn.send_threadsafe, msg["t"], msg["n"]):
                body, out = await self._async_call_body(msg, bufs)
        self._reply(conn, msg, body, out)

    async def _async_call_body(self, msg: dict, bufs: list) -> tuple[dict, list]:
        try:
            if msg["d"] and any(d[0] == "r" for d in msg["d"]):
                args, kwargs = await asyncio.get_running_loop().run_in_executor(None, self.load_args, msg, bufs)
            else:
                args, kwargs = self.load_args(msg, bufs)
            result = getattr(self.instance, msg["m"])(*args, **kwargs)
            if inspect.isawaitable(result):
                result = await result
            return self._pack_results(msg, result)
        except asyncio.CancelledError:
            return self._error_results(msg, TaskCancelledError(msg["t"].hex()))
        except Exception as e:
            return self._error_results(msg, capture_task_error(e, msg["n"], os.getpid(), self.cw.node_id))


def _malformed(conn: Connection, msg: dict, e: Exception) -> None:
    """A request this worker could not even start (fields missing or of the wrong type): its
    caller gets the error, the worker carries on."""
    logging.getLogger("runtime.worker").warning("malformed %r request: %s: %s", msg.get("op"), type(e).__name__, e)
    call_id = msg.get("id")
    if isinstance(call_id, int) and not isinstance(call_id, bool):
        with contextlib.suppress(Exception):
            conn.send_threadsafe({"op": "_r", "id": call_id, "ok": False, "err": f"malformed request: {e}"})
