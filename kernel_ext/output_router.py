"""Routes the output of tasks started by notebook cells to those cells.

The runtime hands every output message of a task this process submitted to
`CoreWorker.output_handler` (on its io thread). Tasks started by `%%remote` are
registered here by task id; anything else falls through to the runtime's default
(printed with a `(name pid=N)` prefix).
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable

from runtime._core import worker_state

DONE = object()  # put on a cell's queue after the last of its task's output


class OutputRouter:
    def __init__(self) -> None:
        self.routes: dict[bytes, Callable[[dict], None]] = {}
        # A task can print before `.remote()` has even returned its ref, so before its route
        # exists: output of tasks named as an expected cell's is held here until it is claimed.
        self.expected: set[str] = set()
        self.early: dict[bytes, list[dict]] = {}
        self._lock = threading.Lock()

    def handle(self, msg: dict) -> bool:
        callback = self.routes.get(msg["t"])
        if callback is None:
            with self._lock:
                callback = self.routes.get(msg["t"])
                if callback is None:
                    if msg.get("n") in self.expected:
                        self.early.setdefault(msg["t"], []).append(msg)
                        return True
                    return False
        callback(msg)
        return True

    def expect(self, name: str) -> None:
        """Hold output of tasks called `name` until their route is opened (call before submitting)."""
        with self._lock:
            self.expected.add(name)

    def _register(self, ref: Any, callback: Callable[[dict], None], name: str | None) -> None:
        tid = _task_id(ref)
        with self._lock:
            self.routes[tid] = callback
            early = self.early.pop(tid, [])
            if name is not None:
                self.expected.discard(name)
        for msg in early:
            callback(msg)

    def open(self, ref: Any, name: str | None = None) -> queue.Queue:
        """A queue that gets the task's output messages, then DONE when it finished. `name`:
        what was passed to expect() before submitting."""
        q: queue.Queue = queue.Queue()
        self._register(ref, q.put, name)
        # Output travels on the same connection as the reply and is handled first, so DONE
        # (queued when the reply arrives) comes after all of it.
        ref.future().add_done_callback(lambda _f: q.put(DONE))
        return q

    def close(self, ref: Any) -> None:
        self.routes.pop(_task_id(ref), None)

    def open_many(self, refs: list, names: list[str] | None = None) -> queue.Queue:
        """One queue for several tasks: it gets (index, message) and (index, DONE) items."""
        q: queue.Queue = queue.Queue()
        for i, ref in enumerate(refs):
            self._register(ref, lambda msg, i=i: q.put((i, msg)), names[i] if names else None)
            ref.future().add_done_callback(lambda _f, i=i: q.put((i, DONE)))
        return q

    def follow(self, ref: Any, on_output: Callable[[dict], None], on_done: Callable[[], None],
               name: str | None = None) -> None:
        """Call on_output for each output message, then on_done (both off the main thread)."""
        tid = _task_id(ref)
        self._register(ref, on_output, name)

        def finished(_f: Any) -> None:
            self.routes.pop(tid, None)
            on_done()

        ref.future().add_done_callback(finished)


def _task_id(ref: Any) -> bytes:
    return bytes(ref._id[:16])


_ROUTER = OutputRouter()


def router() -> OutputRouter:
    """The router, installed on the current runtime connection (which may have changed)."""
    worker_state.current().output_handler = _ROUTER.handle
    return _ROUTER
