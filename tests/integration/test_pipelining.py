"""Pipelining of short tasks (runtime/_core/normal_task_submitter.py): a leased worker is sent
several tasks at once when the recent ones were short. What must hold whatever is queued where:
a task queued behind one that runs long is taken back for an idle worker; a task whose running
task blocks in get() is given back, so nothing waits behind a task that waits for it; a cancel
reaches a queued task at once; and tasks queued behind one that kills its worker never started,
so they run again without using a retry.

Each test first runs short tasks, so the owner's estimate of a task's time allows pipelining,
and checks the submitter's counters, so that a test which did not pipeline fails instead of
passing for the wrong reason.
"""

from __future__ import annotations

import os
import time

import pytest

import runtime
from runtime._core import normal_task_submitter as nts
from runtime._core.session import ensure_initialized
from runtime.exceptions import TaskCancelledError, WorkerCrashedError

DEADLINE_S = 60


@runtime.remote
def noop(i=None):
    return i


@runtime.remote
def wait_for_file(path):
    """Runs until `path` exists (a task that runs long without calling get or wait)."""
    deadline = time.monotonic() + DEADLINE_S
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.005)
    return "released"


def _until(condition, what):
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.005)


def _release(long, release) -> None:
    """`long` (wait_for_file) is still running: let it end."""
    ready, _ = runtime.wait([long], timeout=0)
    assert not ready
    release.touch()
    assert runtime.get(long, timeout=DEADLINE_S) == "released"


def _warm_up():
    assert runtime.get([noop.remote(i) for i in range(300)]) == list(range(300))
    submitter = ensure_initialized().normal_submitter
    assert any(sq.depth(16) > 1 for sq in submitter.queues.values()), "short tasks should allow pipelining"
    return submitter


@pytest.mark.parametrize("ray_start", [{"num_cpus": 2}], indirect=True)
def test_tasks_behind_a_long_task_are_taken_back_by_an_idle_worker(ray_start, tmp_path):
    submitter = _warm_up()
    release = tmp_path / "release"
    given_back = submitter.given_back
    long = wait_for_file.remote(str(release))
    shorts = [noop.remote(i) for i in range(60)]
    # The long task never ends by itself: every short one must finish on the other worker.
    assert runtime.get(shorts, timeout=DEADLINE_S) == list(range(60))
    assert submitter.given_back > given_back, "no task waited behind the long one: nothing was taken back"
    _release(long, release)


@runtime.remote(num_cpus=0)
class Signal:
    def __init__(self):
        import asyncio
        self.event = asyncio.Event()

    async def wait(self):
        await self.event.wait()

    async def send(self):
        self.event.set()


@runtime.remote
def consumer(signal):
    runtime.get(signal.wait.remote())
    return "consumed"


@runtime.remote
def producer(signal):
    runtime.get(signal.send.remote())
    return "produced"


@pytest.mark.parametrize("ray_start", [{"num_cpus": 1}], indirect=True)
def test_a_task_blocked_in_get_gives_back_the_tasks_queued_behind_it(ray_start, monkeypatch):
    """One CPU: the consumer blocks until the producer, submitted after it, runs. Pipelined
    behind the consumer, the producer would wait for it forever. (A lease granted once the
    consumer blocks would also take it back by stealing; stealing is turned off here, so that
    the worker's giving back is what is tested.)"""
    monkeypatch.setattr(nts, "STEAL_AFTER_S", 3600.0)
    submitter = _warm_up()
    signal = Signal.remote()
    pipelined, given_back = submitter.pipelined, submitter.given_back
    c = consumer.remote(signal)
    p = producer.remote(signal)
    assert runtime.get([c, p], timeout=DEADLINE_S) == ["consumed", "produced"]
    assert submitter.pipelined > pipelined and submitter.given_back > given_back


@pytest.mark.parametrize("ray_start", [{"num_cpus": 1}], indirect=True)
def test_a_cancel_reaches_a_task_queued_behind_a_running_one(ray_start, tmp_path):
    submitter = _warm_up()
    release = tmp_path / "release"
    before = submitter.pipelined
    long = wait_for_file.remote(str(release))
    queued = [noop.remote(i) for i in range(5)]
    _until(lambda: submitter.pipelined - before >= 5, "the five are queued behind the long task")
    runtime.cancel(queued[2])
    with pytest.raises(TaskCancelledError):
        runtime.get(queued[2], timeout=DEADLINE_S)  # while the long task still runs
    _release(long, release)
    assert runtime.get([queued[i] for i in (0, 1, 3, 4)], timeout=DEADLINE_S) == [0, 1, 3, 4]


@runtime.remote(max_retries=0)
def exit_worker(path):
    deadline = time.monotonic() + DEADLINE_S
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.005)
    os._exit(1)


@pytest.mark.parametrize("ray_start", [{"num_cpus": 1}], indirect=True)
def test_tasks_queued_behind_one_that_kills_its_worker_run_without_using_a_retry(ray_start, tmp_path):
    submitter = _warm_up()
    go = tmp_path / "go"
    before = submitter.pipelined
    crash = exit_worker.remote(str(go))
    behind = [noop.options(max_retries=0).remote(i) for i in range(10)]
    _until(lambda: submitter.pipelined - before >= 10, "the ten are queued behind the crashing task")
    go.touch()
    with pytest.raises(WorkerCrashedError):
        runtime.get(crash, timeout=DEADLINE_S)
    assert runtime.get(behind, timeout=DEADLINE_S) == list(range(10))


@pytest.mark.parametrize("ray_start", [{"num_cpus": 2, "_system_config": {"max_tasks_in_flight_per_worker": 1}}],
                         indirect=True)
def test_max_tasks_in_flight_per_worker_1_sends_one_task_at_a_time(ray_start):
    assert runtime.get([noop.remote(i) for i in range(300)]) == list(range(300))
    assert runtime.get([noop.remote(i) for i in range(300)]) == list(range(300))
    assert ensure_initialized().normal_submitter.pipelined == 0
