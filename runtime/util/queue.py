"""A first-in, first-out queue shared by tasks and actors (Ray's `ray.util.queue`).

The items live in one async actor holding an `asyncio.Queue`; a `Queue` object
is a thin client around that actor's handle, so it pickles and can be passed to
tasks and other actors, which then use the same queue.

Example:

    >>> import runtime
    >>> from runtime.util.queue import Queue, Empty
    >>> q = Queue(maxsize=10)
    >>> q.put(1)
    >>> q.get()
    1
    >>> q.get(timeout=0.1)
    Traceback (most recent call last):
    ...
    runtime.util.queue.Empty: ...
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

__all__ = ["Empty", "Full", "Queue"]

# Replies of the queue actor: (status, payload). Errors travel as statuses, not
# exceptions, so the client raises plain `Empty` / `Full` (not a TaskError).
_OK = "ok"
_EMPTY = "empty"
_FULL = "full"


class Empty(Exception):
    """Raised by `get` on an empty queue (non-blocking, or after the timeout)."""


class Full(Exception):
    """Raised by `put` on a full queue (non-blocking, or after the timeout)."""


class _QueueActor:
    """The actor that owns the items. All methods are async: they run on the
    actor's event loop, the only thread that touches `self.queue`."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self.queue: asyncio.Queue[Any] = asyncio.Queue(maxsize)

    async def qsize(self) -> int:
        return self.queue.qsize()

    async def empty(self) -> bool:
        return self.queue.empty()

    async def full(self) -> bool:
        return self.queue.full()

    async def put(self, item: Any, timeout: float | None = None) -> tuple[str, Any]:
        try:
            await asyncio.wait_for(self.queue.put(item), timeout)
        except asyncio.TimeoutError:
            return (_FULL, f"the queue stayed full (maxsize {self.maxsize}) "
                           f"for {timeout} s")
        return (_OK, None)

    async def get(self, timeout: float | None = None) -> tuple[str, Any]:
        try:
            item = await asyncio.wait_for(self.queue.get(), timeout)
        except asyncio.TimeoutError:
            return (_EMPTY, f"the queue stayed empty for {timeout} s")
        return (_OK, item)

    async def put_nowait(self, item: Any) -> tuple[str, Any]:
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            return (_FULL, f"the queue is full (maxsize {self.maxsize})")
        return (_OK, None)

    async def put_nowait_batch(self, items: list[Any]) -> tuple[str, Any]:
        if self.maxsize > 0 and len(items) + self.queue.qsize() > self.maxsize:
            return (
                _FULL,
                f"cannot add {len(items)} items to a queue holding "
                f"{self.queue.qsize()} with maxsize {self.maxsize}",
            )
        for item in items:
            self.queue.put_nowait(item)
        return (_OK, None)

    async def get_nowait(self) -> tuple[str, Any]:
        try:
            return (_OK, self.queue.get_nowait())
        except asyncio.QueueEmpty:
            return (_EMPTY, "the queue is empty")

    async def get_nowait_batch(self, num_items: int) -> tuple[str, Any]:
        if num_items > self.queue.qsize():
            return (
                _EMPTY,
                f"cannot get {num_items} items from a queue holding "
                f"{self.queue.qsize()}",
            )
        return (_OK, [self.queue.get_nowait() for _ in range(num_items)])


def _unwrap(reply: tuple[str, Any]) -> Any:
    status, payload = reply
    if status == _OK:
        return payload
    if status == _EMPTY:
        raise Empty(payload)
    raise Full(payload)


def _check_timeout(timeout: float | None) -> None:
    if timeout is not None and timeout < 0:
        raise ValueError(f"'timeout' must be a non-negative number, got {timeout!r}")


class Queue:
    """A FIFO queue backed by an actor, usable from the driver, tasks and actors.

    Args:
        maxsize: Maximum number of items; 0 means unbounded.
        actor_options: Options for the queue actor, passed to
            `.options(...)` (for example `{"num_cpus": 1}` or a `name`).
            By default the actor reserves no CPU.

    Example:

        >>> q = Queue()
        >>> for i in range(3):
        ...     q.put(i)
        >>> [q.get() for _ in range(3)]
        [0, 1, 2]
    """

    def __init__(self, maxsize: int = 0, actor_options: dict[str, Any] | None = None) -> None:
        import runtime

        options: dict[str, Any] = {"num_cpus": 0}
        options.update(actor_options or {})
        self.maxsize = maxsize
        self.actor: Any = runtime.remote(_QueueActor).options(**options).remote(maxsize)

    def __len__(self) -> int:
        return self.size()

    def __repr__(self) -> str:
        return f"Queue(maxsize={self.maxsize})"

    def size(self) -> int:
        """The number of items in the queue."""
        import runtime

        return runtime.get(self.actor.qsize.remote())

    def qsize(self) -> int:
        """The number of items in the queue (same as `size`)."""
        return self.size()

    def empty(self) -> bool:
        """Whether the queue holds no item."""
        import runtime

        return runtime.get(self.actor.empty.remote())

    def full(self) -> bool:
        """Whether the queue holds `maxsize` items."""
        import runtime

        return runtime.get(self.actor.full.remote())

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        """Add an item.

        Args:
            item: The value to add.
            block: Wait for room when the queue is full.
            timeout: With `block`, seconds to wait for room; `None` waits forever.

        Raises:
            Full: The queue is full and `block` is False, or it stayed full for
                `timeout` seconds.
            ValueError: `timeout` is negative.
        """
        import runtime

        if not block:
            _unwrap(runtime.get(self.actor.put_nowait.remote(item)))
            return
        _check_timeout(timeout)
        _unwrap(runtime.get(self.actor.put.remote(item, timeout)))

    async def put_async(
        self, item: Any, block: bool = True, timeout: float | None = None
    ) -> None:
        """`put` for async code: awaits instead of blocking the thread."""
        if not block:
            _unwrap(await self.actor.put_nowait.remote(item))
            return
        _check_timeout(timeout)
        _unwrap(await self.actor.put.remote(item, timeout))

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        """Remove and return the oldest item.

        Args:
            block: Wait for an item when the queue is empty.
            timeout: With `block`, seconds to wait; `None` waits forever.

        Raises:
            Empty: The queue is empty and `block` is False, or it stayed empty
                for `timeout` seconds.
            ValueError: `timeout` is negative.
        """
        import runtime

        if not block:
            return _unwrap(runtime.get(self.actor.get_nowait.remote()))
        _check_timeout(timeout)
        return _unwrap(runtime.get(self.actor.get.remote(timeout)))

    async def get_async(self, block: bool = True, timeout: float | None = None) -> Any:
        """`get` for async code: awaits instead of blocking the thread."""
        if not block:
            return _unwrap(await self.actor.get_nowait.remote())
        _check_timeout(timeout)
        return _unwrap(await self.actor.get.remote(timeout))

    def put_nowait(self, item: Any) -> None:
        """`put(item, block=False)`."""
        self.put(item, block=False)

    def put_nowait_batch(self, items: Iterable[Any]) -> None:
        """Add all `items`, in order, or none of them.

        Raises:
            Full: They do not all fit.
            TypeError: `items` is not iterable.
        """
        import runtime

        if not isinstance(items, Iterable):
            raise TypeError(
                f"put_nowait_batch() takes an iterable of items, got "
                f"{type(items).__name__}."
            )
        _unwrap(runtime.get(self.actor.put_nowait_batch.remote(list(items))))

    def get_nowait(self) -> Any:
        """`get(block=False)`."""
        return self.get(block=False)

    def get_nowait_batch(self, num_items: int) -> list[Any]:
        """Remove and return `num_items` items, in order, or none.

        Raises:
            Empty: Fewer than `num_items` items are queued.
            TypeError: `num_items` is not an int.
            ValueError: `num_items` is negative.
        """
        import runtime

        if not isinstance(num_items, int) or isinstance(num_items, bool):
            raise TypeError(
                f"get_nowait_batch() takes an int, got {type(num_items).__name__}."
            )
        if num_items < 0:
            raise ValueError(f"'num_items' must be non-negative, got {num_items}.")
        return _unwrap(runtime.get(self.actor.get_nowait_batch.remote(num_items)))

    def shutdown(self, force: bool = False, grace_period_s: int = 5) -> None:
        """Stop the queue's actor; the queue is unusable afterwards.

        Args:
            force: Kill the actor at once. Otherwise it is also killed at once:
                queued items are dropped either way (Ray's graceful path only
                lets in-flight calls finish first).
            grace_period_s: Accepted for compatibility with Ray.
        """
        import runtime

        del force, grace_period_s
        if self.actor is not None:
            runtime.kill(self.actor, no_restart=True)
        self.actor = None
