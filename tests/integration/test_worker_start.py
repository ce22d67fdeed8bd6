"""How a node manager starts workers: a few at a time (worker_startup_concurrency), a worker
that exits before it registers is replaced, and one that always does fails what waits for it
with the reason instead of leaving it pending forever.

A worker is made to exit before registering with RUNTIME_TESTING_WORKER_EXIT_AT_START in
its runtime_env's env_vars (runtime/worker/main.py): "always", or a path (exit once).
"""

from __future__ import annotations

import os

import psutil
import pytest

import runtime
from runtime.exceptions import ActorDiedError

EXIT_AT_START = "RUNTIME_TESTING_WORKER_EXIT_AT_START"


@runtime.remote(num_cpus=0)
class Light:
    def ping(self):
        return os.getpid()


def _node_children() -> list[psutil.Process]:
    node = next(p for p in psutil.Process().children() if "runtime.node" in " ".join(p.cmdline()))
    return node.children()


def test_a_worker_that_exits_before_registering_is_replaced(own_cluster, tmp_path):
    runtime.init(num_cpus=1)
    mark = tmp_path / "exited-once"
    actor = Light.options(runtime_env={"env_vars": {EXIT_AT_START: str(mark)}}).remote()
    pid = runtime.get(actor.ping.remote(), timeout=60)
    assert mark.exists(), "the first worker did not exit: nothing was tested"
    assert pid in {p.pid for p in _node_children()}


def test_workers_that_always_exit_at_start_fail_the_actor_and_the_task_with_the_reason(own_cluster):
    runtime.init(num_cpus=1)
    env = {"env_vars": {EXIT_AT_START: "always"}}
    actor = Light.options(runtime_env=env).remote()
    with pytest.raises(ActorDiedError, match=r"3 workers in a row exited \(last exit code 3\) before they registered"):
        runtime.get(actor.ping.remote(), timeout=60)

    @runtime.remote(runtime_env=env)
    def task():
        return 1

    with pytest.raises(Exception, match="before they registered") as info:
        runtime.get(task.remote(), timeout=60)
    assert "logs" in str(info.value), "the error says where to look"
    # The node still starts workers of other environments.
    assert runtime.get(Light.remote().ping.remote(), timeout=60) > 0


def test_three_hundred_actors_created_at_once_all_come_up(own_cluster):
    """Hundreds of workers forked together on two cores each took so long to send their hello
    that some missed hello_timeout_s and the actor stayed PENDING_CREATION (about one in 400)."""
    runtime.init(num_cpus=2)
    actors = [Light.remote() for _ in range(300)]
    pids = runtime.get([a.ping.remote() for a in actors], timeout=240)
    assert len(set(pids)) == 300
