"""`ActorPool`: run work over a fixed set of actors, Ray's `ray.util.ActorPool` API.

The pool is a driver-side bookkeeping object built only on the public API
(`runtime.wait`, `runtime.get`). It never talks to the cluster by itself: the
user's `fn(actor, value)` submits the actor call and returns its `ObjectRef`.

Invariants:

- An actor is in exactly one of `_idle_actors` or the values of `_future_to_actor`
  (busy), or has been popped from the pool with `pop_idle`, or died.
- `_index_to_future` holds every submitted and not yet returned future, keyed by
  its submission index; `_next_return_index` is the smallest index `get_next`
  may return.
- Work submitted while no actor is idle waits in `_pending_submits` and is
  submitted, in order, as soon as an actor comes back.

Example:

    >>> import runtime
    >>> from runtime.util import ActorPool
    >>> @runtime.remote
    ... class Doubler:
    ...     def double(self, v):
    ...         return 2 * v
    >>> pool = ActorPool([Doubler.remote(), Doubler.remote()])
    >>> list(pool.map(lambda a, v: a.double.remote(v), [1, 2, 3, 4]))
    [2, 4, 6, 8]
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

__all__ = ["ActorPool"]

V = TypeVar("V")

_TIMEOUT_MESSAGE = "Timed out waiting for the next result of the ActorPool"


def _future_key(future: Any) -> Any:
    """A hashable key for what `fn` returned (a ref, or a list of refs)."""
    return tuple(future) if isinstance(future, list) else future


def _waitable(future: Any) -> Any:
    """The ref to wait on: for a list of refs (num_returns>1), the last one."""
    if isinstance(future, (list, tuple)):
        return future[-1]
    return future


class ActorPool:
    """Utility to run tasks over a fixed pool of actors.

    Args:
        actors: Actor handles to use. Each is busy from the moment `fn(actor, v)`
            returns its `ObjectRef` until that result has been returned by
            `get_next` / `get_next_unordered`.

    Example:

        >>> pool = ActorPool([a1, a2])
        >>> pool.submit(lambda a, v: a.double.remote(v), 1)
        >>> pool.get_next()
        2
    """

    def __init__(self, actors: Iterable[Any]) -> None:
        self._idle_actors: list[Any] = list(actors)
        # future key -> (submission index, actor)
        self._future_to_actor: dict[Any, tuple[int, Any]] = {}
        # submission index -> future
        self._index_to_future: dict[int, Any] = {}
        self._next_task_index = 0
        self._next_return_index = 0
        self._pending_submits: list[tuple[Callable[[Any, Any], Any], Any]] = []

    def __repr__(self) -> str:
        return (
            f"ActorPool(idle={len(self._idle_actors)}, "
            f"busy={len(self._future_to_actor)}, "
            f"pending={len(self._pending_submits)})"
        )

    # -- bulk ---------------------------------------------------------------

    def map(self, fn: Callable[[Any, V], Any], values: Iterable[V]) -> Iterator[Any]:
        """Apply `fn(actor, value)` over `values`; iterate results in input order.

        Results still pending from earlier submissions are discarded first.

        Args:
            fn: Takes `(actor, value)`, submits an actor call and returns its ref.
            values: The values to process.

        Returns:
            An iterator over the results, in the order of `values`. Iterating it
            drives the computation; errors of a task are raised when reached.
        """
        self._drain(ordered=True)
        for v in values:
            self.submit(fn, v)

        def results() -> Iterator[Any]:
            while self.has_next():
                yield self.get_next()

        return results()

    def map_unordered(
        self, fn: Callable[[Any, V], Any], values: Iterable[V]
    ) -> Iterator[Any]:
        """Like `map`, but yield results in completion order.

        Args:
            fn: Takes `(actor, value)`, submits an actor call and returns its ref.
            values: The values to process.

        Returns:
            An iterator over the results as they finish.
        """
        self._drain(ordered=False)
        for v in values:
            self.submit(fn, v)

        def results() -> Iterator[Any]:
            while self.has_next():
                yield self.get_next_unordered()

        return results()

    def _drain(self, *, ordered: bool) -> None:
        """Forget results of earlier submissions that nobody consumed."""
        while self.has_next():
            try:
                if ordered:
                    self.get_next(timeout=0, ignore_if_timedout=True)
                else:
                    self.get_next_unordered(timeout=0, ignore_if_timedout=True)
            except TimeoutError:
                pass
            except ValueError:
                # get_next after get_next_unordered: switch to unordered draining.
                ordered = False
            except Exception:  # noqa: BLE001 - a discarded result's own error
                pass

    # -- single -------------------------------------------------------------

    def submit(self, fn: Callable[[Any, V], Any], value: V) -> None:
        """Schedule one task on an idle actor, or queue it until one is free.

        Args:
            fn: Takes `(actor, value)`, submits an actor call and returns its ref.
            value: The value to compute a result for.
        """
        if not self._idle_actors:
            self._pending_submits.append((fn, value))
            return
        actor = self._idle_actors.pop()
        future = fn(actor, value)
        index = self._next_task_index
        self._future_to_actor[_future_key(future)] = (index, actor)
        self._index_to_future[index] = future
        self._next_task_index += 1

    def has_next(self) -> bool:
        """Whether any submitted result has not been returned yet."""
        return bool(self._future_to_actor)

    def get_next(
        self, timeout: float | None = None, ignore_if_timedout: bool = False
    ) -> Any:
        """Return the next result in submission order.

        Args:
            timeout: Seconds to wait for it; `None` waits as long as it takes.
            ignore_if_timedout: On timeout, drop that task (its actor goes back
                to the pool) before raising `TimeoutError`.

        Returns:
            The result of the oldest task not yet returned.

        Raises:
            StopIteration: Nothing is pending.
            TimeoutError: The result was not ready within `timeout` seconds.
            ValueError: `get_next_unordered` already returned a later result.
            Exception: the task's own error (for example a `TaskError`).
        """
        import runtime

        if not self.has_next():
            raise StopIteration("No more results to get")
        if self._next_return_index >= self._next_task_index:
            raise ValueError(
                "It is not allowed to call get_next() after get_next_unordered() "
                "returned a later result; use get_next_unordered() instead."
            )
        future = self._index_to_future[self._next_return_index]
        timed_out = False
        if timeout is not None:
            ready, _ = runtime.wait([_waitable(future)], num_returns=1, timeout=timeout)
            if not ready:
                if not ignore_if_timedout:
                    raise TimeoutError(_TIMEOUT_MESSAGE)
                timed_out = True
        del self._index_to_future[self._next_return_index]
        self._next_return_index += 1
        _, actor = self._future_to_actor.pop(_future_key(future))
        if timed_out:
            self._return_actor(actor)
            raise TimeoutError(f"{_TIMEOUT_MESSAGE}; the task {future!r} was dropped.")
        return self._get_result(future, actor)

    def get_next_unordered(
        self, timeout: float | None = None, ignore_if_timedout: bool = False
    ) -> Any:
        """Return any finished result (the first to finish).

        Args:
            timeout: Seconds to wait for one; `None` waits as long as it takes.
            ignore_if_timedout: On timeout, drop the oldest pending task (its
                actor goes back to the pool) before raising `TimeoutError`.

        Returns:
            The result of some task not yet returned.

        Raises:
            StopIteration: Nothing is pending.
            TimeoutError: No result was ready within `timeout` seconds.
            Exception: the task's own error (for example a `TaskError`).
        """
        import runtime

        if not self.has_next():
            raise StopIteration("No more results to get")
        by_ref = {_waitable(f): f for f in self._index_to_future.values()}
        ready, _ = runtime.wait(list(by_ref), num_returns=1, timeout=timeout)
        if ready:
            future = by_ref[ready[0]]
        else:
            if not ignore_if_timedout:
                raise TimeoutError(_TIMEOUT_MESSAGE)
            future = self._index_to_future[min(self._index_to_future)]
        index, actor = self._future_to_actor.pop(_future_key(future))
        del self._index_to_future[index]
        self._next_return_index = max(self._next_return_index, index + 1)
        if not ready:
            self._return_actor(actor)
            raise TimeoutError(f"{_TIMEOUT_MESSAGE}; the task {future!r} was dropped.")
        return self._get_result(future, actor)

    def _get_result(self, future: Any, actor: Any) -> Any:
        import runtime
        from runtime.exceptions import ActorDiedError

        alive = True
        try:
            return runtime.get(future)
        except ActorDiedError:
            alive = False
            raise
        finally:
            self._return_actor(actor, alive=alive)

    def _return_actor(self, actor: Any, *, alive: bool = True) -> None:
        # A dead actor stays out of the idle set, or submit() would keep picking it.
        if alive:
            self._idle_actors.append(actor)
        while self._pending_submits and self._idle_actors:
            fn, value = self._pending_submits.pop(0)
            self.submit(fn, value)

    # -- membership ---------------------------------------------------------

    def has_free(self) -> bool:
        """Whether an actor is idle and no submitted work is waiting for one."""
        return bool(self._idle_actors) and not self._pending_submits

    def pop_idle(self) -> Any | None:
        """Remove and return an idle actor, or `None` if none is free."""
        if self.has_free():
            return self._idle_actors.pop()
        return None

    def push(self, actor: Any) -> None:
        """Add an actor to the pool (it starts idle, or takes queued work).

        Raises:
            ValueError: The actor already belongs to this pool.
        """
        busy = [a for _, a in self._future_to_actor.values()]
        if any(actor is a or actor == a for a in [*self._idle_actors, *busy]):
            raise ValueError("Actor already belongs to current ActorPool")
        self._return_actor(actor)
