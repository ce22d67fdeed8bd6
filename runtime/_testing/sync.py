"""Synchronisation helpers for tests: wait on conditions, never on the clock.

- `wait_for(predicate, timeout=..., what=...)` polls an observable fact with a
  short backoff and fails with the description and the last value seen.
- `SignalActor` is an event shared by the driver, tasks and actors. It is an
  undecorated class: decorate it where it is used,

      signal = runtime.remote(SignalActor).remote()     # or .options(num_cpus=0)
      ref = blocked_task.remote(signal)                 # the task awaits signal.wait
      wait_for(lambda: runtime.get(signal.cur_num_waiters.remote()) == 1,
               what="the task is waiting on the signal")
      runtime.get(signal.send.remote())
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["SignalActor", "wait_for", "wait_for_path"]

T = TypeVar("T")

_FIRST_INTERVAL_S = 0.01
_MAX_INTERVAL_S = 0.25


def wait_for_path(path: str, timeout: float = 60.0) -> bool:
    """In a task: hold its worker until the test creates `path` (a release the test controls),
    at most `timeout` s. True if the path appeared."""
    import os
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def wait_for(
    predicate: Callable[[], T],
    timeout: float = 10.0,
    what: str = "the condition",
    *,
    retry_on: tuple[type[BaseException], ...] = (Exception,),
) -> T:
    """Poll `predicate` until it returns a truthy value, and return that value.

    Args:
        predicate: Called repeatedly; an exception of a `retry_on` type counts as
            "not yet" and is remembered.
        timeout: Seconds (monotonic clock) before giving up.
        what: Describes the awaited fact, for the failure message.
        retry_on: Exception types that mean "not yet" rather than failure.

    Returns:
        The first truthy value returned by `predicate`.

    Raises:
        AssertionError: `timeout` passed first. The message names `what`, the
            last value returned and the last exception raised, if any.
    """
    deadline = time.monotonic() + timeout
    interval = _FIRST_INTERVAL_S
    last_value: Any = None
    last_exc: BaseException | None = None
    attempts = 0
    while True:
        attempts += 1
        try:
            value = predicate()
        except retry_on as exc:
            last_exc = exc
        else:
            if value:
                return value
            last_value = value
            last_exc = None
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        time.sleep(min(interval, remaining))
        interval = min(interval * 2, _MAX_INTERVAL_S)
    detail = f"last value {last_value!r}"
    if last_exc is not None:
        detail += f"; last exception {type(last_exc).__name__}: {last_exc}"
    raise AssertionError(
        f"Timed out after {timeout} s ({attempts} checks) waiting for {what}: {detail}."
    )


class SignalActor:
    """An event as an async actor (Ray's test `SignalActor`).

    Methods (call with `.remote()`):
        send(clear=False): set the event, releasing every waiter; with `clear`,
            clear it again right after (a pulse).
        wait(should_wait=True): return once the event is set.
        cur_num_waiters(): how many `wait` calls are blocked now.
        max_num_waiters(): the most `wait` calls ever blocked at once.
        is_set(): whether the event is set.
        clear(): clear the event.
    """

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self._num_waiters = 0
        self._max_waiters = 0

    async def send(self, clear: bool = False) -> None:
        self._event.set()
        if clear:
            self._event.clear()

    async def wait(self, should_wait: bool = True) -> None:
        if not should_wait:
            return
        self._num_waiters += 1
        self._max_waiters = max(self._max_waiters, self._num_waiters)
        try:
            await self._event.wait()
        finally:
            self._num_waiters -= 1

    async def cur_num_waiters(self) -> int:
        return self._num_waiters

    async def max_num_waiters(self) -> int:
        return self._max_waiters

    async def is_set(self) -> bool:
        return self._event.is_set()

    async def clear(self) -> None:
        self._event.clear()
