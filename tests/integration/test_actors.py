"""Actors on a real embedded cluster: ordering, concurrency, handles, named
actors and namespaces, kill, restarts and task retries, constructor errors."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import uuid

import cloudpickle
import pytest

import runtime
from runtime._testing.sync import SignalActor, wait_for
from runtime.exceptions import ActorDiedError, ActorError, GetTimeoutError

cloudpickle.register_pickle_by_value(sys.modules[__name__])

Signal = runtime.remote(num_cpus=0)(SignalActor)


@runtime.remote
class Counter:
    def __init__(self, start=0):
        self.value = start
        self.calls = []

    def incr(self, by=1):
        self.value += by
        return self.value

    def record(self, i):
        self.calls.append(i)

    def get_calls(self):
        return self.calls

    def get(self):
        return self.value

    def pid(self):
        return os.getpid()

    def reconstructed(self):
        return runtime.get_runtime_context().was_current_actor_reconstructed

    def actor_id(self):
        return runtime.get_runtime_context().get_actor_id()


def _unique(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _kill_quietly(*handles):
    for h in handles:
        try:
            runtime.kill(h)
        except Exception:  # noqa: BLE001 - cleanup of an already dead actor
            pass


# -- ordering and concurrency ---------------------------------------------------


def test_sync_actor_runs_calls_in_submission_order_per_caller(shared_runtime):
    c = Counter.remote()
    for i in range(100):
        c.record.remote(i)
    assert runtime.get(c.get_calls.remote(), timeout=60) == list(range(100))
    _kill_quietly(c)


def test_actor_keeps_state_between_calls(shared_runtime):
    c = Counter.remote(10)
    refs = [c.incr.remote() for _ in range(5)]
    assert runtime.get(refs, timeout=60) == [11, 12, 13, 14, 15]
    assert runtime.get(c.get.remote(), timeout=30) == 15
    _kill_quietly(c)


@runtime.remote
class Blocker:
    def block(self, signal_handle, tag):
        runtime.get(signal_handle.wait.remote())
        return tag


def test_threaded_actor_runs_two_calls_at_once_when_max_concurrency_two(shared_runtime):
    sig = Signal.remote()
    actor = Blocker.options(max_concurrency=2).remote()
    refs = [actor.block.remote(sig, "a"), actor.block.remote(sig, "b")]
    wait_for(
        lambda: runtime.get(sig.cur_num_waiters.remote(), timeout=10) == 2,
        timeout=30,
        what="both calls of the max_concurrency=2 actor waiting at once",
    )
    runtime.get(sig.send.remote(), timeout=10)
    assert sorted(runtime.get(refs, timeout=30)) == ["a", "b"]
    _kill_quietly(actor, sig)


@runtime.remote
class AsyncRendezvous:
    def __init__(self):
        self.arrived = 0
        self.both_here = None

    async def meet(self, expected):
        if self.both_here is None:
            self.both_here = asyncio.Event()
        self.arrived += 1
        if self.arrived >= expected:
            self.both_here.set()
        # Only returns True if another call runs while this one is suspended.
        await asyncio.wait_for(self.both_here.wait(), timeout=20)
        return True


def test_async_actor_runs_calls_concurrently(shared_runtime):
    actor = AsyncRendezvous.remote()
    refs = [actor.meet.remote(3) for _ in range(3)]
    assert runtime.get(refs, timeout=40) == [True, True, True]
    _kill_quietly(actor)


# -- handles ------------------------------------------------------------------


@runtime.remote
def incr_through_handle(counter, n):
    return runtime.get([counter.incr.remote() for _ in range(n)])[-1]


@runtime.remote
class Forwarder:
    def __init__(self, counter):
        self.counter = counter

    def forward(self, n):
        return runtime.get([self.counter.incr.remote() for _ in range(n)])[-1]


def test_actor_handle_usable_when_passed_to_task_and_actor(shared_runtime):
    c = Counter.remote()
    assert runtime.get(incr_through_handle.remote(c, 3), timeout=60) == 3
    fwd = Forwarder.remote(c)
    assert runtime.get(fwd.forward.remote(2), timeout=60) == 5
    assert runtime.get(c.get.remote(), timeout=30) == 5
    _kill_quietly(fwd, c)


@runtime.remote
class Pairs:
    @runtime.method(num_returns=2)
    def split(self, x):
        return x, -x

    def three(self):
        return 1, 2, 3


def test_method_num_returns_gives_two_refs(shared_runtime):
    p = Pairs.remote()
    a, b = p.split.remote(7)
    assert runtime.get([a, b], timeout=30) == [7, -7]
    refs = p.three.options(num_returns=3).remote()
    assert runtime.get(refs, timeout=30) == [1, 2, 3]
    _kill_quietly(p)


# -- named actors and namespaces --------------------------------------------------


def test_get_actor_returns_named_actor(shared_runtime):
    name = _unique("named")
    c = Counter.options(name=name).remote()
    runtime.get(c.incr.remote(5), timeout=30)
    same = runtime.get_actor(name)
    assert runtime.get(same.get.remote(), timeout=30) == 5
    _kill_quietly(c)


def test_get_actor_raises_value_error_when_name_unknown(shared_runtime):
    with pytest.raises(ValueError):
        runtime.get_actor(_unique("nobody"))


def test_named_actor_creation_raises_value_error_when_name_taken(shared_runtime):
    name = _unique("taken")
    c = Counter.options(name=name).remote()
    runtime.get(c.get.remote(), timeout=30)
    with pytest.raises(ValueError):
        d = Counter.options(name=name).remote()
        runtime.get(d.get.remote(), timeout=30)
    _kill_quietly(c)


def test_named_actor_isolated_by_namespace(shared_runtime):
    ctx = runtime.get_runtime_context()
    assert isinstance(ctx.namespace, str) and ctx.namespace

    name = _unique("ns")
    in_x = Counter.options(name=name, namespace="x").remote(1)
    runtime.get(in_x.get.remote(), timeout=30)

    found = runtime.get_actor(name, namespace="x")
    assert runtime.get(found.get.remote(), timeout=30) == 1
    with pytest.raises(ValueError):
        runtime.get_actor(name)  # the driver's own (anonymous) namespace
    with pytest.raises(ValueError):
        runtime.get_actor(name, namespace="y")

    # The same name in another namespace is a different actor.
    in_default = Counter.options(name=name).remote(2)
    assert runtime.get(runtime.get_actor(name).get.remote(), timeout=30) == 2
    assert runtime.get(runtime.get_actor(name, namespace="x").get.remote(), timeout=30) == 1
    _kill_quietly(in_x, in_default)


def test_get_if_exists_returns_existing_actor(shared_runtime):
    name = _unique("gie")
    first = Counter.options(name=name, get_if_exists=True).remote(100)
    runtime.get(first.incr.remote(), timeout=30)
    second = Counter.options(name=name, get_if_exists=True).remote(0)
    assert runtime.get(second.get.remote(), timeout=30) == 101
    assert runtime.get(first.actor_id.remote(), timeout=30) == runtime.get(
        second.actor_id.remote(), timeout=30
    )
    _kill_quietly(first)


@runtime.remote
class BrokenInit:
    def __init__(self):
        raise ValueError("bad-init-5521")

    def ping(self):
        return "pong"


def test_exception_in_init_reported_on_first_call_as_actor_died_error(shared_runtime):
    actor = BrokenInit.remote()
    with pytest.raises(ActorDiedError) as info:
        runtime.get(actor.ping.remote(), timeout=30)
    assert "bad-init-5521" in str(info.value)


# -- death, restarts and retries ----------------------------------------------------


def test_kill_makes_later_calls_raise_actor_died_error(shared_runtime):
    c = Counter.remote()
    runtime.get(c.incr.remote(), timeout=30)
    runtime.kill(c)
    with pytest.raises(ActorDiedError):
        runtime.get(c.get.remote(), timeout=30)


def test_actor_died_error_is_actor_error(shared_runtime):
    c = Counter.remote()
    runtime.get(c.get.remote(), timeout=30)
    runtime.kill(c)
    with pytest.raises(ActorError):
        runtime.get(c.get.remote(), timeout=30)


@pytest.mark.timeout(90)
def test_max_restarts_restarts_actor_with_fresh_state_when_process_killed(ray_start):
    c = Counter.options(max_restarts=1).remote()
    assert runtime.get(c.incr.remote(5), timeout=30) == 5
    assert runtime.get(c.reconstructed.remote(), timeout=30) is False
    pid = runtime.get(c.pid.remote(), timeout=30)
    os.kill(pid, signal.SIGKILL)

    def restarted_pid():
        try:
            new_pid = runtime.get(c.pid.remote(), timeout=5)
        except (ActorError, GetTimeoutError):
            return None
        return new_pid if new_pid != pid else None

    wait_for(restarted_pid, timeout=45, what="the actor restarted in a new process",
             retry_on=(ActorError, GetTimeoutError))
    assert runtime.get(c.get.remote(), timeout=30) == 0
    assert runtime.get(c.reconstructed.remote(), timeout=30) is True


@pytest.mark.timeout(90)
def test_actor_dies_when_killed_process_has_no_restarts_left(ray_start):
    c = Counter.options(max_restarts=0).remote()
    pid = runtime.get(c.pid.remote(), timeout=30)
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(ActorDiedError):
        # Calls may be queued before the death is noticed; the error must come.
        for _ in range(20):
            runtime.get(c.get.remote(), timeout=30)


@runtime.remote
class DiesOnce:
    def work(self, path):
        if not os.path.exists(path):
            with open(path, "w") as f:
                f.write(str(os.getpid()))
            os._exit(1)
        return "done"


@pytest.mark.timeout(90)
def test_max_task_retries_retries_call_when_actor_restarts(ray_start, tmp_path):
    marker = str(tmp_path / "died")
    actor = DiesOnce.options(max_restarts=1, max_task_retries=1).remote()
    assert runtime.get(actor.work.remote(marker), timeout=60) == "done"
    assert os.path.exists(marker)


@pytest.mark.timeout(90)
def test_call_fails_when_actor_restarts_without_task_retries(ray_start, tmp_path):
    marker = str(tmp_path / "died")
    actor = DiesOnce.options(max_restarts=1, max_task_retries=0).remote()
    with pytest.raises(ActorError):
        runtime.get(actor.work.remote(marker), timeout=60)
    # The restarted actor serves later calls.
    assert runtime.get(actor.work.remote(marker), timeout=60) == "done"
