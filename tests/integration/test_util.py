"""`runtime.util.ActorPool` and `runtime.util.queue.Queue` on a real cluster."""

from __future__ import annotations

import asyncio
import sys

import cloudpickle
import pytest

import runtime
from runtime._testing.sync import SignalActor, wait_for
from runtime.util import ActorPool
from runtime.util.queue import Empty, Full, Queue

cloudpickle.register_pickle_by_value(sys.modules[__name__])

Signal = runtime.remote(num_cpus=0)(SignalActor)


@runtime.remote(num_cpus=0)
class Doubler:
    def double(self, v):
        return 2 * v

    def wait_and_double(self, signal_handle, v):
        runtime.get(signal_handle.wait.remote())
        return 2 * v

    def fail(self, v):
        raise ValueError(f"bad value {v}")


@pytest.fixture
def pool_actors(shared_runtime):
    actors = [Doubler.remote(), Doubler.remote()]
    yield actors
    for a in actors:
        runtime.kill(a)


# -- ActorPool --------------------------------------------------------------------


def test_actor_pool_map_returns_results_in_input_order(pool_actors):
    pool = ActorPool(pool_actors)
    assert list(pool.map(lambda a, v: a.double.remote(v), range(8))) == [
        0, 2, 4, 6, 8, 10, 12, 14,
    ]
    assert not pool.has_next()


def test_actor_pool_map_unordered_returns_every_result(pool_actors):
    pool = ActorPool(pool_actors)
    results = list(pool.map_unordered(lambda a, v: a.double.remote(v), range(8)))
    assert sorted(results) == [0, 2, 4, 6, 8, 10, 12, 14]


def test_actor_pool_submit_queues_work_when_all_actors_busy(pool_actors):
    pool = ActorPool(pool_actors)
    for v in range(5):
        pool.submit(lambda a, v: a.double.remote(v), v)
    assert not pool.has_free()
    assert pool.has_next()
    assert [pool.get_next() for _ in range(5)] == [0, 2, 4, 6, 8]
    assert not pool.has_next()
    assert pool.has_free()
    with pytest.raises(StopIteration):
        pool.get_next()


def test_actor_pool_get_next_unordered_returns_finished_first(pool_actors):
    sig = Signal.remote()
    pool = ActorPool(pool_actors)
    pool.submit(lambda a, v: a.wait_and_double.remote(sig, v), 1)
    pool.submit(lambda a, v: a.double.remote(v), 2)
    assert pool.get_next_unordered(timeout=30) == 4
    runtime.get(sig.send.remote(), timeout=10)
    assert pool.get_next_unordered(timeout=30) == 2
    runtime.kill(sig)


def test_actor_pool_get_next_raises_timeout_error_when_result_late(pool_actors):
    sig = Signal.remote()
    pool = ActorPool(pool_actors)
    pool.submit(lambda a, v: a.wait_and_double.remote(sig, v), 5)
    with pytest.raises(TimeoutError):
        pool.get_next(timeout=0.2)
    assert pool.has_next(), "a plain timeout must keep the task"
    runtime.get(sig.send.remote(), timeout=10)
    assert pool.get_next(timeout=30) == 10
    runtime.kill(sig)


def test_actor_pool_get_next_drops_task_when_ignore_if_timedout(pool_actors):
    sig = Signal.remote()
    pool = ActorPool(pool_actors[:1])
    pool.submit(lambda a, v: a.wait_and_double.remote(sig, v), 5)
    with pytest.raises(TimeoutError):
        pool.get_next(timeout=0.2, ignore_if_timedout=True)
    assert not pool.has_next()
    assert pool.has_free()
    runtime.get(sig.send.remote(), timeout=10)
    runtime.kill(sig)


def test_actor_pool_pop_idle_and_push_change_membership(pool_actors):
    a1, a2 = pool_actors
    pool = ActorPool([a1])
    pool.submit(lambda a, v: a.double.remote(v), 1)
    assert pool.pop_idle() is None
    assert pool.get_next() == 2
    popped = pool.pop_idle()
    assert popped is not None
    assert pool.pop_idle() is None
    pool.push(popped)
    pool.push(a2)
    with pytest.raises(ValueError):
        pool.push(a2)
    assert sorted(pool.map(lambda a, v: a.double.remote(v), [1, 2])) == [2, 4]


def test_actor_pool_get_next_raises_task_error(pool_actors):
    pool = ActorPool(pool_actors)
    pool.submit(lambda a, v: a.fail.remote(v), 3)
    with pytest.raises(ValueError, match="bad value 3"):
        pool.get_next(timeout=30)
    # The actor went back to the pool.
    assert pool.has_free()
    assert list(pool.map(lambda a, v: a.double.remote(v), [4])) == [8]


# -- Queue ------------------------------------------------------------------------


@pytest.fixture
def queue(shared_runtime):
    queues = []

    def make(*args, **kwargs):
        q = Queue(*args, **kwargs)
        queues.append(q)
        return q

    yield make
    for q in queues:
        q.shutdown()


def test_queue_put_get_fifo(queue):
    q = queue()
    for i in range(5):
        q.put(i)
    assert q.qsize() == 5 and q.size() == 5 and len(q) == 5
    assert not q.empty()
    assert [q.get(timeout=10) for _ in range(5)] == [0, 1, 2, 3, 4]
    assert q.empty()


def test_queue_get_nowait_raises_empty_when_no_item(queue):
    q = queue()
    with pytest.raises(Empty):
        q.get_nowait()
    with pytest.raises(Empty):
        q.get(block=False)


def test_queue_get_raises_empty_when_timeout_expires(queue):
    q = queue()
    with pytest.raises(Empty):
        q.get(timeout=0.2)


def test_queue_put_nowait_raises_full_when_at_maxsize(queue):
    q = queue(maxsize=2)
    q.put_nowait("a")
    q.put("b")
    assert q.full()
    with pytest.raises(Full):
        q.put_nowait("c")
    with pytest.raises(Full):
        q.put("c", timeout=0.2)
    assert q.get() == "a"
    q.put_nowait("c")
    assert [q.get(), q.get()] == ["b", "c"]


def test_queue_rejects_negative_timeout(queue):
    q = queue()
    with pytest.raises(ValueError):
        q.get(timeout=-1)
    with pytest.raises(ValueError):
        q.put(1, timeout=-1)


def test_queue_batch_operations_all_or_nothing(queue):
    q = queue(maxsize=3)
    q.put_nowait_batch([1, 2])
    with pytest.raises(Full):
        q.put_nowait_batch([3, 4])
    assert q.qsize() == 2
    with pytest.raises(Empty):
        q.get_nowait_batch(3)
    assert q.get_nowait_batch(2) == [1, 2]
    with pytest.raises(TypeError):
        q.put_nowait_batch(5)
    with pytest.raises(TypeError):
        q.get_nowait_batch("2")


@runtime.remote
def produce(q, n):
    for i in range(n):
        q.put(i)
    return n


@runtime.remote
def consume(q, n):
    return [q.get(timeout=30) for _ in range(n)]


def test_queue_shared_between_producer_and_consumer_tasks(queue):
    q = queue(maxsize=3)
    consumer = consume.remote(q, 10)
    producer = produce.remote(q, 10)
    assert runtime.get(producer, timeout=60) == 10
    assert runtime.get(consumer, timeout=60) == list(range(10))


def test_queue_blocking_get_returns_when_item_put_later(queue):
    q = queue()
    waiter = consume.remote(q, 1)
    wait_for(lambda: runtime.wait([waiter], timeout=0)[1], timeout=5,
             what="the consumer is still waiting")
    q.put("late item")
    assert runtime.get(waiter, timeout=30) == ["late item"]


def test_queue_async_put_and_get(queue):
    q = queue()

    async def main():
        await q.put_async("x")
        await q.put_async("y", timeout=5)
        first = await q.get_async()
        second = await q.get_async(timeout=5)
        try:
            await q.get_async(block=False)
        except Empty:
            empty_raised = True
        else:
            empty_raised = False
        return first, second, empty_raised

    assert asyncio.run(main()) == ("x", "y", True)


def test_queue_unusable_after_shutdown(shared_runtime):
    q = Queue()
    q.put(1)
    actor = q.actor
    q.shutdown()
    assert q.actor is None
    with pytest.raises(Exception):  # noqa: B017 - the actor is gone
        runtime.get(actor.qsize.remote(), timeout=30)
