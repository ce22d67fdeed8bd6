"""Tasks on a real embedded cluster: options, returns, arguments, retries,
cancellation, errors, get/wait and `await ref`."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time

import cloudpickle
import pytest

import runtime
from runtime._testing.sync import SignalActor, wait_for
from runtime.exceptions import (
    GetTimeoutError,
    TaskCancelledError,
    TaskError,
    WorkerCrashedError,
)

# Workers may not import this test module: ship its functions by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

Signal = runtime.remote(num_cpus=0)(SignalActor)


@runtime.remote
def add(a, b):
    return a + b


@runtime.remote
def identity(x):
    return x


@runtime.remote
def wait_then_return(signal_handle, value):
    runtime.get(signal_handle.wait.remote())
    return value


def _append_line(path, text):
    with open(path, "a") as f:
        f.write(text + "\n")
        f.flush()
        os.fsync(f.fileno())


def _lines(path):
    try:
        with open(path) as f:
            return f.read().splitlines()
    except FileNotFoundError:
        return []


@runtime.remote
def tree(depth):
    if depth == 0:
        return 1
    return sum(runtime.get([tree.remote(depth - 1), tree.remote(depth - 1)]))


# -- options and returns ------------------------------------------------------


def test_remote_function_returns_value_when_called_with_remote(shared_runtime):
    assert runtime.get(add.remote(1, 2), timeout=30) == 3
    assert runtime.get([add.remote(i, i) for i in range(5)], timeout=30) == [0, 2, 4, 6, 8]


def test_options_accept_every_task_option_when_valid(shared_runtime):
    @runtime.remote(num_cpus=1, max_retries=0)
    def env_value():
        return os.environ.get("ORR_OPT_VAR"), runtime.get_runtime_context().get_task_id()

    ref = env_value.options(
        num_cpus=0.5,
        num_gpus=0,
        memory=10 * 1024 * 1024,
        resources={},
        num_returns=1,
        max_retries=1,
        retry_exceptions=False,
        scheduling_strategy="DEFAULT",
        runtime_env={"env_vars": {"ORR_OPT_VAR": "set"}},
        name="env_value_task",
    ).remote()
    value, task_id = runtime.get(ref, timeout=60)
    assert value == "set"
    assert task_id


def test_num_returns_gives_one_ref_per_value_when_greater_than_one(shared_runtime):
    @runtime.remote(num_returns=3)
    def three():
        return 1, "two", [3]

    refs = three.remote()
    assert isinstance(refs, list) and len(refs) == 3
    assert runtime.get(refs, timeout=30) == [1, "two", [3]]

    @runtime.remote
    def pair(x):
        return x, x * 2

    a, b = pair.options(num_returns=2).remote(21)
    assert runtime.get(b, timeout=30) == 42
    assert runtime.get(a, timeout=30) == 21


def test_top_level_ref_arguments_resolved_when_passed_positionally_or_by_keyword(
    shared_runtime,
):
    x = runtime.put(40)
    y = add.remote(1, 1)
    assert runtime.get(add.remote(x, b=y), timeout=30) == 42


def test_nested_refs_left_as_refs_when_inside_containers(shared_runtime):
    @runtime.remote
    def inspect_nested(container):
        inner = container["ref"][0]
        ref_type = type(runtime.put(None))
        return type(inner).__name__, isinstance(inner, ref_type), runtime.get(inner)

    ref = runtime.put("payload")
    type_name, is_ref, value = runtime.get(inspect_nested.remote({"ref": [ref]}), timeout=30)
    assert is_ref, f"nested ref was resolved to a {type_name}"
    assert value == "payload"


def test_task_submits_tasks_when_nested(shared_runtime):
    @runtime.remote
    def fan_out(n):
        return sum(runtime.get([add.remote(i, 1) for i in range(n)]))

    assert runtime.get(fan_out.remote(5), timeout=60) == 15
    assert runtime.get(tree.remote(2), timeout=60) == 4


def test_get_accepts_list_and_returns_values_in_order(shared_runtime):
    refs = [runtime.put(i) for i in range(10)] + [identity.remote("last")]
    assert runtime.get(refs, timeout=30) == [*range(10), "last"]


# -- retries ------------------------------------------------------------------


def test_retry_exceptions_true_retries_application_error(shared_runtime, tmp_path):
    marker = str(tmp_path / "attempts")

    @runtime.remote(max_retries=2, retry_exceptions=True)
    def flaky(path):
        _append_line(path, "attempt")
        if len(_lines(path)) < 2:
            raise ValueError("transient")
        return "ok"

    assert runtime.get(flaky.remote(marker), timeout=60) == "ok"
    assert len(_lines(marker)) == 2


def test_retry_exceptions_list_retries_only_listed_types(shared_runtime, tmp_path):
    listed = str(tmp_path / "listed")
    unlisted = str(tmp_path / "unlisted")

    @runtime.remote(max_retries=3, retry_exceptions=[KeyError])
    def raise_until_third(path, exc_type):
        _append_line(path, "attempt")
        if len(_lines(path)) < 3:
            raise exc_type("transient")
        return "ok"

    assert runtime.get(raise_until_third.remote(listed, KeyError), timeout=60) == "ok"
    assert len(_lines(listed)) == 3

    with pytest.raises(ValueError, match="transient"):
        runtime.get(raise_until_third.remote(unlisted, ValueError), timeout=60)
    assert len(_lines(unlisted)) == 1


def test_application_error_not_retried_by_default(shared_runtime, tmp_path):
    marker = str(tmp_path / "attempts")

    @runtime.remote
    def fails(path):
        _append_line(path, "attempt")
        raise RuntimeError("no retry")

    with pytest.raises(RuntimeError, match="no retry"):
        runtime.get(fails.remote(marker), timeout=30)
    assert len(_lines(marker)) == 1


# -- errors, get and wait -------------------------------------------------------


class CustomError(Exception):
    pass


def test_task_error_is_instance_of_user_exception_with_remote_traceback(shared_runtime):
    @runtime.remote
    def raise_value_error():
        raise ValueError("boom-7319")

    ref = raise_value_error.remote()
    try:
        runtime.get(ref, timeout=30)
    except ValueError as exc:
        assert isinstance(exc, TaskError)
        text = str(exc)
        assert "boom-7319" in text
        assert "raise_value_error" in text, f"no remote traceback in: {text}"
        assert "Traceback" in text or "File " in text, f"no remote traceback in: {text}"
    else:
        pytest.fail("get() did not raise the task's ValueError")


def test_task_error_is_instance_of_user_defined_exception_class(shared_runtime):
    @runtime.remote
    def raise_custom():
        raise CustomError("custom-4411")

    with pytest.raises(CustomError, match="custom-4411") as info:
        runtime.get(raise_custom.remote(), timeout=30)
    assert isinstance(info.value, TaskError)


def test_error_propagates_through_dependent_task(shared_runtime):
    @runtime.remote
    def raise_key_error():
        raise KeyError("missing-2288")

    with pytest.raises(KeyError) as info:
        runtime.get(identity.remote(raise_key_error.remote()), timeout=30)
    assert "missing-2288" in str(info.value)


def test_get_raises_get_timeout_error_when_result_not_ready(shared_runtime):
    sig = Signal.remote()
    ref = wait_then_return.remote(sig, "late")
    start = time.monotonic()
    with pytest.raises(GetTimeoutError):
        runtime.get(ref, timeout=0.5)
    assert time.monotonic() - start < 10
    runtime.get(sig.send.remote(), timeout=30)
    assert runtime.get(ref, timeout=30) == "late"
    runtime.kill(sig)


def test_get_timeout_error_is_a_timeout_error(shared_runtime):
    sig = Signal.remote()
    ref = wait_then_return.remote(sig, 1)
    with pytest.raises(TimeoutError):
        runtime.get(ref, timeout=0.1)
    runtime.get(sig.send.remote(), timeout=30)
    runtime.get(ref, timeout=30)
    runtime.kill(sig)


def test_wait_returns_ready_in_input_order_when_num_returns_reached(shared_runtime):
    sig = Signal.remote()
    slow1 = wait_then_return.remote(sig, "slow1")
    fast1 = identity.remote("fast1")
    slow2 = wait_then_return.remote(sig, "slow2")
    fast2 = runtime.put("fast2")
    refs = [slow1, fast1, slow2, fast2]

    ready, not_ready = runtime.wait(refs, num_returns=2, timeout=30)
    assert ready == [fast1, fast2]
    assert not_ready == [slow1, slow2]

    runtime.get(sig.send.remote(), timeout=30)
    ready, not_ready = runtime.wait(refs, num_returns=4, timeout=30)
    assert ready == refs and not_ready == []
    runtime.kill(sig)


def test_wait_returns_partial_result_when_timeout_expires(shared_runtime):
    sig = Signal.remote()
    blocked = wait_then_return.remote(sig, None)
    done = runtime.put(1)
    start = time.monotonic()
    ready, not_ready = runtime.wait([blocked, done], num_returns=2, timeout=0.5)
    assert time.monotonic() - start < 10
    assert ready == [done]
    assert not_ready == [blocked]
    runtime.get(sig.send.remote(), timeout=30)
    runtime.get(blocked, timeout=30)
    runtime.kill(sig)


def test_await_ref_returns_value_inside_asyncio_run(shared_runtime):
    async def main():
        first = await add.remote(20, 22)
        rest = await asyncio.gather(*[identity.remote(i) for i in range(3)])
        put_value = await runtime.put("stored")
        return first, rest, put_value

    assert asyncio.run(main()) == (42, [0, 1, 2], "stored")


def test_await_ref_raises_task_error_inside_asyncio_run(shared_runtime):
    @runtime.remote
    def raise_value_error():
        raise ValueError("async-boom")

    async def main():
        await raise_value_error.remote()

    with pytest.raises(ValueError, match="async-boom"):
        asyncio.run(main())


# -- retries when the worker dies (own cluster) ----------------------------------


@pytest.mark.timeout(60)
def test_max_retries_reruns_task_when_worker_exits(ray_start, tmp_path):
    marker = str(tmp_path / "attempts")

    @runtime.remote(max_retries=1)
    def die_once(path):
        first = not os.path.exists(path)
        _append_line(path, str(os.getpid()))
        if first:
            os._exit(1)
        return "second attempt"

    assert runtime.get(die_once.remote(marker), timeout=45) == "second attempt"
    assert len(_lines(marker)) == 2


@pytest.mark.timeout(60)
def test_max_retries_reruns_task_when_worker_sigkilled(ray_start, tmp_path):
    marker = str(tmp_path / "pids")

    @runtime.remote(max_retries=2)
    def slow_first_attempt(path):
        first = not os.path.exists(path)
        _append_line(path, str(os.getpid()))
        if first:
            time.sleep(60)  # killed by the test meanwhile
            return "not killed"
        return "retried"

    ref = slow_first_attempt.remote(marker)
    pid = int(wait_for(lambda: _lines(marker), timeout=30, what="first attempt started")[0])
    os.kill(pid, signal.SIGKILL)
    assert runtime.get(ref, timeout=45) == "retried"
    pids = _lines(marker)
    assert len(pids) == 2 and pids[1] != str(pid)


@pytest.mark.timeout(60)
def test_worker_crash_raises_worker_crashed_error_when_max_retries_zero(ray_start, tmp_path):
    marker = str(tmp_path / "attempts")

    @runtime.remote(max_retries=0)
    def always_dies(path):
        _append_line(path, "attempt")
        os._exit(1)

    with pytest.raises(WorkerCrashedError):
        runtime.get(always_dies.remote(marker), timeout=45)
    assert len(_lines(marker)) == 1


# -- cancellation ---------------------------------------------------------------


def _hold_cpu_until(release_path, started_path):
    # Busy-holds its CPU (no runtime.get, which would lend the CPU back).
    _append_line(started_path, str(os.getpid()))
    deadline = time.monotonic() + 60
    while not os.path.exists(release_path) and time.monotonic() < deadline:
        time.sleep(0.05)
    return "released"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("ray_start", [{"num_cpus": 1}], indirect=True)
def test_cancel_queued_task_raises_task_cancelled_error(ray_start, tmp_path):
    release, started = str(tmp_path / "release"), str(tmp_path / "started")
    hold = runtime.remote(_hold_cpu_until)
    blocker = hold.remote(release, started)
    wait_for(lambda: _lines(started), timeout=30, what="the blocker holds the only CPU")

    queued = identity.remote("should not run")
    runtime.cancel(queued)
    with pytest.raises(TaskCancelledError):
        runtime.get(queued, timeout=30)

    _append_line(release, "go")
    assert runtime.get(blocker, timeout=30) == "released"


@pytest.mark.timeout(60)
def test_cancel_running_task_raises_task_cancelled_error_when_not_forced(ray_start, tmp_path):
    started = str(tmp_path / "started")

    @runtime.remote(max_retries=0)
    def sleepy(path):
        _append_line(path, "started")
        for _ in range(600):
            time.sleep(0.1)
        return "finished"

    ref = sleepy.remote(started)
    wait_for(lambda: _lines(started), timeout=30, what="the task is running")
    runtime.cancel(ref)
    with pytest.raises(TaskCancelledError):
        runtime.get(ref, timeout=30)


@pytest.mark.timeout(60)
def test_cancel_running_task_kills_worker_when_forced(ray_start, tmp_path):
    started = str(tmp_path / "started")

    @runtime.remote(max_retries=0)
    def stubborn(path):
        _append_line(path, str(os.getpid()))
        time.sleep(60)
        return "finished"

    ref = stubborn.remote(started)
    pid = int(wait_for(lambda: _lines(started), timeout=30, what="the task is running")[0])
    runtime.cancel(ref, force=True)
    with pytest.raises((WorkerCrashedError, TaskCancelledError)):
        runtime.get(ref, timeout=30)

    import psutil

    wait_for(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie",
             timeout=10, what=f"the worker {pid} of the force-cancelled task exited")
    # The cluster still runs tasks afterwards.
    assert runtime.get(add.remote(2, 3), timeout=30) == 5


# -- output ----------------------------------------------------------------------------


@runtime.remote
def chatty_child(i):
    print(f"child line {i}")
    return i


@runtime.remote
def chatty_parent():
    print("parent line")
    print("parent error line", file=sys.stderr)
    return runtime.get([chatty_child.remote(i) for i in range(2)])


def test_task_output_printed_by_driver_with_name_and_pid_when_task_prints(shared_runtime, capsys):
    assert runtime.get(chatty_parent.remote(), timeout=60) == [0, 1]
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert any(line.startswith("(chatty_parent pid=") and line.endswith(") parent line") for line in lines), lines
    for i in range(2):  # children's lines travel up through the parent, tagged once, with their own name
        assert any(line.startswith("(chatty_child pid=") and line.endswith(f") child line {i}")
                   for line in lines), lines
    assert "parent error line" in captured.err
