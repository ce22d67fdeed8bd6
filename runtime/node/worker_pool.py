"""The node's workers: the record of each, and how they are started.

A worker is asked of the zygote (zygote.py), which forks it and says its pid. At most
`worker_startup_concurrency` are starting at once (Ray's maximum_startup_concurrency): hundreds
forked together on a few cores each took so long to send their hello that some missed
hello_timeout_s. The cap also keeps the zygote's socket from filling both ways (the node writes
requests, the zygote's pid lines come back) so neither side ever blocks on the other.

A worker that exits before it registers, or has not registered within startup_timeout_s, is
replaced while requests still wait for one; after three such exits in a row for one
environment those requests fail with the reason, instead of waiting forever.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..exceptions import RuntimeEnvSetupError
from ..rpc.connection import Connection
from .zygote import request_worker

if TYPE_CHECKING:
    from .daemon import NodeDaemon

logger = logging.getLogger("runtime.node")

START_FAILURES_BEFORE_GIVING_UP = 3


@dataclass
class WorkerRecord:
    worker_id: str
    env_key: str
    env: dict  # its resolved runtime_env (runtime/runtime_env/spec.py)
    job_id: str = ""
    env_keys: list = field(default_factory=list)  # the runtime_env cache entries it uses
    state: str = "starting"  # starting -> idle <-> leased | actor -> dead
    pid: int = 0
    conn: Connection | None = None
    address: str = ""
    lease_id: int = 0
    demand: dict = field(default_factory=dict)
    gpus: list = field(default_factory=list)
    blocked: bool = False
    actor_id: str = ""
    lease_owner: Connection | None = None
    idle_since: float = 0.0
    started_at: float = field(default_factory=time.time)
    forked: bool = False  # asked of the zygote (not queued, not in runtime_env setup)


class WorkerStarter:
    def __init__(self, host: NodeDaemon, num_cpus: float) -> None:
        self.host = host
        self.concurrency = host.config.worker_startup_concurrency or max(2, int(num_cpus))
        self.queued: deque[WorkerRecord] = deque()  # beyond the concurrency
        self.expired: set[str] = set()  # given up by _expired; refused if they register later
        self.unclaimed_exits: dict[int, float] = {}  # reaped pids whose pid line is not read yet
        self.failures: dict[str, int] = defaultdict(int)  # env_key -> exits before registering, in a row
        self._partial = b""
        self._tasks: set[asyncio.Task] = set()

    def start(self, env: dict, env_key: str) -> None:
        wid = os.urandom(16).hex()
        rec = self.host.workers[wid] = WorkerRecord(wid, env_key, env, job_id=env_key.partition("|")[0])
        self.queued.append(rec)
        self.start_queued()

    def start_queued(self) -> None:
        """Start queued workers while fewer than `concurrency` are starting."""
        workers = self.host.workers
        starting = sum(1 for w in workers.values() if w.state == "starting" and w.forked)
        while self.queued and starting < self.concurrency:
            rec = self.queued.popleft()
            if workers.get(rec.worker_id) is rec and not self.host.stopping:
                self._launch(rec)
                starting += 1

    def registered(self, rec: WorkerRecord) -> None:
        self.failures[rec.env_key] = 0
        self.start_queued()

    def fail_waiting(self, env_key: str, err: Exception) -> None:
        """Fail every request waiting for a worker of this environment."""
        waiting = self.host.waiting_for_worker.get(env_key) or deque()
        while waiting:
            req, gpus = waiting.popleft()
            self.host.pool.release(req.demand, gpus)
            if not req.payload[0].done():
                req.payload[0].set_exception(err)

    def replace(self, env_key: str, env: dict) -> None:
        """After a starting worker is lost: one more start if the requests waiting for a worker
        of this environment outnumber the workers still starting (or queued) for it."""
        waiting = len(self.host.waiting_for_worker.get(env_key) or ())
        starting = sum(1 for w in self.host.workers.values() if w.state == "starting" and w.env_key == env_key)
        if waiting > starting:
            self.start(env, env_key)
        self.start_queued()

    def exited(self, pid: int) -> None:
        """A reaped child. Registered workers are mourned when their connection closes."""
        rec = next((w for w in self.host.workers.values() if w.pid == pid), None)
        if rec is None:
            self.unclaimed_exits[pid] = time.monotonic()
        elif rec.state == "starting":
            self._failed(rec)

    def zygote_readable(self) -> None:
        """The zygote's lines: the pid of each worker it forked."""
        sock = self.host.zygote_sock
        try:
            data = sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        if not data:
            asyncio.get_running_loop().remove_reader(sock.fileno())
            return
        *lines, self._partial = (self._partial + data).split(b"\n")
        now = time.monotonic()
        for pid, seen in list(self.unclaimed_exits.items()):
            if now - seen > 60:  # not a worker of ours (a pid line comes within milliseconds)
                del self.unclaimed_exits[pid]
        for line in lines:
            msg = json.loads(line)
            rec = self.host.workers.get(msg["worker_id"])
            if rec is None or rec.pid:
                continue
            rec.pid = msg["pid"]
            if self.unclaimed_exits.pop(rec.pid, None) is not None:
                self._failed(rec)

    def _launch(self, rec: WorkerRecord) -> None:
        env = rec.env
        if not self.host.runtime_envs.needs_setup(env):
            self._fork(rec, {"env_vars": env.get("env_vars") or {}, "runtime_env": env})
            return
        task = asyncio.get_running_loop().create_task(self._start_in_env(rec))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _fork(self, rec: WorkerRecord, ctx: dict) -> None:
        rec.forked = True
        request_worker(self.host.zygote_sock, rec.worker_id, ctx)
        asyncio.get_running_loop().call_later(self.host.config.startup_timeout_s, self._expired, rec)

    async def _start_in_env(self, rec: WorkerRecord) -> None:
        """A worker whose runtime_env needs files or packages: made ready in the node's cache
        first (runtime_env_agent.py). If that fails, the tasks and actors waiting for such a
        worker fail with RuntimeEnvSetupError; the node carries on."""
        host = self.host
        try:
            ctx = await host.runtime_envs.setup(rec.env)
        except Exception as e:  # noqa: BLE001 - every setup failure goes to the waiting requests
            err = e if isinstance(e, RuntimeEnvSetupError) else RuntimeEnvSetupError(f"{type(e).__name__}: {e}")
            logger.warning("runtime_env setup failed: %s", err)
            host.workers.pop(rec.worker_id, None)
            self.fail_waiting(rec.env_key, err)
            host.schedule()
            self.start_queued()
            return
        if rec.worker_id not in host.workers or host.stopping:
            return
        rec.env_keys = ctx.pop("keys")
        host.runtime_envs.acquire(rec.env_keys)
        self._fork(rec, ctx)

    def _expired(self, rec: WorkerRecord) -> None:
        """A forked worker that never registered (stuck): its place is given up, and the
        requests waiting for a worker get another one."""
        host = self.host
        if rec.state != "starting" or host.workers.get(rec.worker_id) is not rec or host.stopping:
            return
        logger.warning("worker %s did not register within %g s; starting another", rec.worker_id[:8],
                       host.config.startup_timeout_s)
        host.workers.pop(rec.worker_id)
        self.expired.add(rec.worker_id)
        host.kill(rec)
        host.runtime_envs.release(rec.env_keys)
        self.replace(rec.env_key, rec.env)

    def _failed(self, rec: WorkerRecord) -> None:
        """A worker exited before it registered."""
        code: Any = self.host.exit_codes.get(rec.pid)
        logger.warning("worker %s (pid %d) exited with code %s before it registered", rec.worker_id[:8],
                       rec.pid, code)
        self.failures[rec.env_key] += 1
        if self.failures[rec.env_key] >= START_FAILURES_BEFORE_GIVING_UP:
            failures, self.failures[rec.env_key] = self.failures[rec.env_key], 0
            self.fail_waiting(rec.env_key, RuntimeError(
                f"{failures} workers in a row exited (last exit code {code}) before they registered with node "
                f"{self.host.node_id[:8]}; see that node's log ({self.host.session_dir}/logs)"))
        self.host.worker_died(rec)
