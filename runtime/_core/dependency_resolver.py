"""A task's arguments that are objects (its dependencies), from the submitter's side.

Dependencies this process owns are waited for here, before a task is queued or an actor call
sent, so no worker sits leased while an argument is still being computed; those owned elsewhere
the executing worker fetches itself. When the task goes out, small owned values travel inline
in its message, and a value in shared memory on the worker's own node is mapped there directly.

Sans-I/O: it reads the memory store; `on_loop` is how a readiness callback (any thread) gets
back onto the io loop.
"""

from __future__ import annotations

from typing import Any, Callable

from .memory_store import ERROR, INLINE, SHM, MemoryStore
from .task_spec import TaskSpec


class DependencyResolver:
    def __init__(self, store: MemoryStore, address: str, on_loop: Callable[..., None]) -> None:
        self.store = store
        self.address = address  # ours: the owner of the dependencies waited for
        self.on_loop = on_loop

    def pending(self, spec: TaskSpec) -> bool:
        return any(r._owner == self.address and not self.store.ready(r._id) for r in spec.deps)

    def when_ready(self, spec: TaskSpec, then: Callable[[TaskSpec], None]) -> None:
        """then(spec) once every dependency we own is ready: now, or on the loop later."""
        waiting = [r for r in spec.deps if r._owner == self.address and not self.store.ready(r._id)]
        if not waiting:
            then(spec)
            return
        left = [len(waiting)]

        def one() -> None:
            left[0] -= 1
            if left[0] == 0:
                then(spec)

        for r in waiting:
            if not self.store.add_waiter(r._id, lambda: self.on_loop(one)):
                one()

    def error(self, spec: TaskSpec) -> BaseException | None:
        """The error of a dependency we own that failed: the task fails with it, unrun."""
        for r in spec.deps:
            e = self.store.entries.get(r._id)
            if e is not None and e.state == ERROR and r._owner == self.address:
                return e.error
        return None

    def message_deps(self, spec: TaskSpec, node_id: str) -> tuple[list, list]:
        """(deps, bufs) of the push message for a worker on `node_id`: one [how, id, owner, meta,
        nbufs] per dependency, how being "i" (inline: its buffers follow the arguments'), "s"
        (in shared memory on that node) or "r" (the worker fetches it from its owner)."""
        bufs: list[Any] = list(spec.args_bufs)
        deps = []
        for r in spec.deps:
            e = self.store.entries.get(r._id)
            if r._owner == self.address and e is not None and e.state == INLINE:
                deps.append(["i", r._id, r._owner, e.meta, len(e.bufs)])
                bufs.extend(e.bufs)
            elif e is not None and e.state == SHM and e.node_id == node_id:
                deps.append(["s", r._id, r._owner, None, 0])
            else:
                deps.append(["r", r._id, r._owner, None, 0])
        return deps, bufs
