"""`map_batches` with a callable class on a pool of actors (Ray's `ActorPoolStrategy`).

A class given `compute=ActorPoolStrategy(...)` (or `concurrency=`) is a stage boundary: it is
not fused into the per-block task. Instead each actor of the pool builds the class once (a
model loaded once, say) and then runs the batch loop on block after block. The per-block
operators before the stage run inside the actor too (as Ray fuses a read and its maps into the
actor operator), so no CPU is spent on tasks that only hand blocks over; the operators after
the stage are fused per block into tasks as usual.

The pool starts at `min_size` actors and grows, up to `max_size`, whenever a block is waiting
and every actor is busy. Each actor has one block at a time; output order is the input order.
Once the last block is handed out the pool shrinks: each actor is killed as soon as it has no
more work (its CPUs then serve the tasks after the stage), not when the slowest one is done.
The actors are killed at the latest when the stream ends, or when the consumer stops early
(`take(5)`), or on an error. (The pool does not shrink while blocks still come: an actor
started again would build the class again, a model loaded again, say.)

Actors hold their CPUs for their whole life, so a pool that took every CPU of the cluster
would starve the tasks that run the operators after it (and, with the bounded stream window,
hang). The pool therefore grows only as far as the cluster's CPUs (and GPUs) allow, leaving
one CPU for those tasks when there are any; a `min_size` that cannot fit is a ValueError.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from .._core.object_ref import ObjectRef
from . import block as B
from .plan import Stage, _count_blocks, _execute, _expand, _has_stages, _Made

if TYPE_CHECKING:
    from .dataset import Dataset

# map_batches' remote args that an actor accepts; the rest (e.g. max_retries) are task options.
_ACTOR_OPTIONS = ("num_cpus", "num_gpus", "memory", "resources", "scheduling_strategy", "runtime_env",
                  "max_restarts", "max_task_retries", "max_concurrency")


@dataclass(frozen=True)
class ActorPoolStrategy:
    """An autoscaling pool of actors for a callable class: `size=n` for a fixed pool, or
    `min_size`..`max_size` (`max_size=None`: as many as the cluster's resources allow)."""

    size: int | None = None
    min_size: int | None = None
    max_size: int | None = None
    initial_size: int | None = None
    # Accepted for Ray's API and unused: each actor runs one block at a time, on one thread.
    max_tasks_in_flight_per_actor: int | None = None
    max_concurrent_calls_per_actor: int | None = None
    enable_true_multi_threading: bool = False

    def __post_init__(self) -> None:
        for field in ("size", "min_size", "max_size", "initial_size"):
            v = getattr(self, field)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
                raise ValueError(f"ActorPoolStrategy: {field} must be a positive int, got {v!r}.")
        if self.size is not None and (self.min_size is not None or self.max_size is not None):
            raise ValueError("ActorPoolStrategy: give either size (a fixed pool) or min_size/max_size, not both.")
        if self.max_size is not None and self.max_size < (self.min_size or 1):
            raise ValueError(f"ActorPoolStrategy: max_size ({self.max_size}) is smaller than min_size "
                             f"({self.min_size or 1}).")

    @property
    def bounds(self) -> tuple[int, int | None]:
        """(min, max) actors; max None means "as many as fit"."""
        if self.size is not None:
            return self.size, self.size
        lo = self.min_size or 1
        if self.initial_size is not None:
            lo = max(lo, min(self.initial_size, self.max_size or self.initial_size))
        return lo, self.max_size


def resolve_compute(fn: Any, compute: Any, concurrency: Any, name: str) -> ActorPoolStrategy | None:
    """The actor pool map_batches should use, or None for tasks (Ray's rules for `compute` and
    `concurrency`)."""
    is_class = isinstance(fn, type)
    if compute is not None:
        if compute == "tasks":
            return None
        if compute == "actors":
            compute = ActorPoolStrategy()
        if not isinstance(compute, ActorPoolStrategy):
            raise ValueError(f"{name}: compute must be an ActorPoolStrategy (or 'tasks'/'actors'), got {compute!r}.")
        if not is_class:
            raise ValueError(f"{name}: compute=ActorPoolStrategy(...) needs a callable class (actors keep its "
                             f"instance), but fn is {type(fn).__name__} {fn!r}. Pass a class with __call__, or "
                             "drop compute to run the function in tasks.")
        return compute
    if concurrency is None:
        return None
    if isinstance(concurrency, int) and not isinstance(concurrency, bool):
        return ActorPoolStrategy(size=concurrency) if is_class else None  # functions: tasks, bounded by the window
    if isinstance(concurrency, tuple) and len(concurrency) in (2, 3) and all(isinstance(c, int) for c in concurrency):
        if not is_class:
            raise ValueError(f"{name}: concurrency={concurrency!r} (a pool's min and max) needs a callable class; "
                             "for a function use concurrency=n.")
        initial = concurrency[2] if len(concurrency) == 3 else None
        return ActorPoolStrategy(min_size=concurrency[0], max_size=concurrency[1], initial_size=initial)
    raise ValueError(f"{name}: concurrency must be an int or a (min, max) tuple of ints, got {concurrency!r}.")


class _MapWorker:
    """One pool actor: the user's class built once, then the batch loop on each block."""

    def __init__(self, fn_class: type, ctor_args: tuple, ctor_kwargs: dict, loop: tuple) -> None:
        self._fn = fn_class(*ctor_args, **ctor_kwargs)
        self._loop = loop  # (batch_size, batch_format, fn_args, fn_kwargs, name)

    def run(self, source: Any, ops: tuple) -> tuple[pa.Table, int]:
        blk, _ = _execute(source, ops)  # the fused operators before the stage
        size, fmt, fn_args, fn_kwargs, name = self._loop
        out = B.compact(B.map_batches(self._fn, blk, size, fmt, fn_args, fn_kwargs, name))
        return out, out.num_rows


class ActorStage(Stage):
    """The lazy source of a dataset whose last operator is a pooled `map_batches`: it stands
    for the parent's blocks transformed by the pool, made when the dataset is executed."""

    def __init__(self, parent: Dataset, fn_class: type, ctor_args: tuple, ctor_kwargs: dict, loop: tuple,
                 strategy: ActorPoolStrategy, remote_args: dict) -> None:
        self.parent = parent
        self.fn_class, self.ctor_args, self.ctor_kwargs, self.loop = fn_class, ctor_args, ctor_kwargs, loop
        self.strategy = strategy
        self.options = {"num_cpus": 1, **{k: v for k, v in remote_args.items() if k in _ACTOR_OPTIONS}}

    def num_blocks(self) -> int | None:
        return _count_blocks(self.parent)  # one output block per input block

    def blocks(self, *, tasks_after: bool) -> Iterator[tuple[ObjectRef, ObjectRef]]:
        """(block ref, rows ref) per parent block, in order, made by the pool."""
        import runtime
        lo, hi = self._pool_bounds(reserve_cpu=tasks_after or _has_stages(self.parent))
        worker = runtime.remote(_MapWorker).options(**self.options)
        pool = _Pool(lambda: worker.remote(self.fn_class, self.ctor_args, self.ctor_kwargs, self.loop), hi)
        inputs = _expand(self.parent._sources, self.parent._ops)
        try:
            pool.grow_to(lo)
            for src, ops in inputs:
                actor = pool.next_free()
                arg = src.block if isinstance(src, _Made) else src
                block, rows = actor.run.options(num_returns=2).remote(arg, ops)
                pool.assign(rows, actor)
                yield block, rows
            pool.drain()  # the last blocks: wait for them, killing each actor once it is done
        finally:  # also on an early stop (the generator is closed) and on errors
            with contextlib.suppress(Exception):
                inputs.close()
            pool.shutdown()

    def _pool_bounds(self, reserve_cpu: bool) -> tuple[int, int]:
        """(min, max) actors, max capped by what the cluster can hold next to the other work."""
        import runtime
        lo, hi = self.strategy.bounds
        total = runtime.cluster_resources()
        fits = math.inf
        cpus, gpus = float(self.options.get("num_cpus") or 0), float(self.options.get("num_gpus") or 0)
        spare = 1.0 if reserve_cpu and cpus > 0 else 0.0
        if cpus > 0:
            fits = min(fits, math.floor((total.get("CPU", 0.0) - spare) / cpus + 1e-9))
        if gpus > 0:
            fits = min(fits, math.floor(total.get("GPU", 0.0) / gpus + 1e-9))
        if lo > fits:
            need = f"{lo * cpus:g} CPUs" + (f" and {lo * gpus:g} GPUs" if gpus else "")
            room = f"{total.get('CPU', 0.0):g} CPUs" + (f" and {total.get('GPU', 0.0):g} GPUs" if gpus else "")
            extra = ", plus 1 CPU for the tasks that run the operators around it" if spare else ""
            raise ValueError(f"{self.loop[4]}: the actor pool needs at least {lo} actors, that is {need}{extra}, "
                             f"but the cluster has {room}. Lower min_size/size (or num_cpus/num_gpus in "
                             "map_batches), or add resources.")
        top = hi if hi is not None else fits
        return lo, int(max(lo, min(top, fits)))


class _Pool:
    """The driver-side bookkeeping of the actors: who is free, who works on which block."""

    def __init__(self, make: Any, hi: int) -> None:
        self._make, self._hi = make, hi
        self.actors: list = []
        self._idle: list = []
        self._busy: dict[ObjectRef, Any] = {}  # a block's rows ref -> the actor making it

    def grow_to(self, n: int) -> None:
        while len(self.actors) < n:
            self._idle.append(self._spawn())

    def _spawn(self) -> Any:
        actor = self._make()
        self.actors.append(actor)
        return actor

    def assign(self, rows: ObjectRef, actor: Any) -> None:
        self._busy[rows] = actor

    def next_free(self) -> Any:
        """A free actor: one that finished, else a new one if the pool may grow (a block is
        waiting and every actor is busy), else the first to finish."""
        if not self._idle and self._busy:
            self._reap(timeout=0)
        if not self._idle and len(self.actors) < self._hi:
            self._idle.append(self._spawn())
        while not self._idle:
            self._reap(timeout=None)
        return self._idle.pop(0)

    def _reap(self, timeout: float | None) -> None:
        import runtime
        ready, _ = runtime.wait(list(self._busy), num_returns=1, timeout=timeout)
        for ref in ready:
            self._idle.append(self._busy.pop(ref))

    def drain(self) -> None:
        """No more blocks to hand out: kill each actor as soon as it has nothing to do. (Its
        results outlive it: they are the driver's objects, as the results of every task.)"""
        self._release_idle()
        while self._busy:
            self._reap(timeout=None)
            self._release_idle()

    def _release_idle(self) -> None:
        import runtime
        for actor in self._idle:
            with contextlib.suppress(Exception):
                runtime.kill(actor)
            self.actors.remove(actor)
        self._idle.clear()

    def shutdown(self) -> None:
        import runtime
        for actor in self.actors:
            with contextlib.suppress(Exception):
                runtime.kill(actor)
        self.actors.clear()
