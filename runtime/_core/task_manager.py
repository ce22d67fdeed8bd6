"""The owner's book of the tasks it submitted: which are pending, whether one gets another
try, and which finished ones are kept as lineage to rebuild lost results.

Sans-I/O: it reads the memory store (to see where results landed) and changes specs and its
own tables; what to send, store or log is the caller's, decided from what these methods return.
"""

from __future__ import annotations

import pickle

from .memory_store import SHM, MemoryStore
from .task_spec import TaskSpec

# What becomes of a task whose worker died under it (retry_after_worker_death).
CANCELLED, RETRY, FAILED = "cancelled", "retry", "failed"


class TaskManager:
    def __init__(self, store: MemoryStore) -> None:
        self.store = store
        # return object id -> its task, while the task is pending (cancel, output routing, cw.tasks)
        self.tasks: dict[bytes, TaskSpec] = {}
        # owned result in shared memory -> the finished task that made it
        self.lineage: dict[bytes, TaskSpec] = {}

    # -- pending ---------------------------------------------------------------------------
    def add_pending(self, spec: TaskSpec) -> None:
        for oid in spec.return_ids:
            self.tasks[oid] = spec

    def pending(self, oid: bytes) -> TaskSpec | None:
        """The unfinished task that makes `oid`, if any."""
        spec = self.tasks.get(oid)
        return None if spec is None or spec.finished else spec

    def children_of(self, parent_task_id: bytes) -> list[bytes]:
        """The return ids of the pending tasks submitted while `parent_task_id` ran."""
        return [oid for oid, spec in list(self.tasks.items()) if getattr(spec, "parent", None) == parent_task_id]

    def finish(self, spec: TaskSpec, error: BaseException | None) -> bool | None:
        """Mark `spec` finished. None if it already was; else whether its arguments may be
        released now (False: they stay pinned, as lineage of a result that may be rebuilt)."""
        if spec.finished:
            return None
        spec.finished = True
        for oid in spec.return_ids:
            if self.tasks.get(oid) is spec:
                del self.tasks[oid]
        return not self._keep_lineage(spec, error)

    # -- retries ---------------------------------------------------------------------------
    @staticmethod
    def consume_retry(spec: TaskSpec) -> bool:
        """Spend one of the task's retries (negative: unlimited). False if none is left or it was cancelled."""
        if spec.max_retries == 0 or spec.cancelled:
            return False
        spec.max_retries -= 1
        return True

    def retry_after_worker_death(self, spec: TaskSpec) -> str:
        if spec.cancelled:
            return CANCELLED
        return RETRY if self.consume_retry(spec) else FAILED

    @staticmethod
    def exception_to_retry(spec: TaskSpec, reply: dict) -> str | None:
        """The exception's type name, if the task raised one its retry_exceptions asks to retry
        on (one retry is spent); None otherwise."""
        if not spec.retry_exceptions or spec.max_retries == 0 or spec.cancelled:
            return None
        for kind, meta, *_ in reply["res"]:
            if kind == "e":
                err = pickle.loads(meta)
                cause = getattr(err, "cause", err)
                rx = spec.retry_exceptions
                if rx is True or (isinstance(rx, (list, tuple)) and isinstance(cause, tuple(rx))):
                    spec.max_retries -= 1
                    return type(cause).__name__
        return None

    # -- lineage ---------------------------------------------------------------------------
    # A task's results in shared memory live on one node; if it dies they are gone. As in Ray,
    # the owner keeps the task (and its arguments pinned) while such a result is referenced and
    # the task has retries left, and runs it again when a reader finds the copy gone.
    def _keep_lineage(self, spec: TaskSpec, error: BaseException | None) -> bool:
        if error is not None or spec.actor_id or spec.max_retries == 0:
            return False
        kept = False
        for oid in spec.return_ids:
            e = self.store.entries.get(oid)
            if e is not None and e.state == SHM:
                self.lineage[oid] = spec
                kept = True
        return kept

    def forget(self, oid: bytes) -> TaskSpec | None:
        """`oid` was released: drop what refers to it. Returns the task whose arguments are
        now free (its last result kept as lineage went), if any."""
        self.tasks.pop(oid, None)
        spec = self.lineage.pop(oid, None)
        if spec is not None and not any(self.lineage.get(o) is spec for o in spec.return_ids):
            return spec
        return None

    def resubmit_for_recovery(self, spec: TaskSpec) -> None:
        """Make `spec` pending again to rebuild its lost results (their readers wait anew)."""
        if spec.max_retries > 0:
            spec.max_retries -= 1
        for o in spec.return_ids:
            self.lineage.pop(o, None)
            self.store.reset_pending(o)
        spec.finished, spec.lease = False, None
