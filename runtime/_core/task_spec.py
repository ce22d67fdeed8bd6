"""What a submitted task is, as data (imported by the submitter and the executor)."""

from __future__ import annotations

from typing import Any


class ArgRef:
    """Placeholder for a top-level ObjectRef argument; the worker puts the value here."""

    __slots__ = ("index",)

    def __init__(self, index: int) -> None:
        self.index = index

    def __reduce__(self) -> tuple:
        return ArgRef, (self.index,)


class TaskSpec:
    """A normal task as its owner keeps it while it is pending (the most numerous object of a
    driver that queues many tasks: each slot is 8 bytes per queued task, so fields that only
    actor calls have live on ActorTaskSpec)."""

    __slots__ = (
        "task_id", "parent", "name", "fid", "fn_blob", "args_meta", "args_bufs", "deps", "nested", "return_ids",
        "demand", "env", "max_retries", "retry_exceptions", "sched_key", "cancelled", "lease", "finished", "cell",
        "pg", "strategy", "context",
    )
    actor_id = ""  # an ActorTaskSpec's are its own
    method = ""
    is_actor_creation = False  # actors are created by the control store, not from a spec

    def __init__(self, **kw: Any) -> None:
        self.fn_blob = b""
        self.fid = b""
        self.nested: list | tuple = ()  # the refs inside its arguments (empty: the shared ())
        self.deps: list | tuple = ()  # its top-level ObjectRef arguments
        self.demand: dict = {}
        self.env: dict = {}
        self.max_retries = 0
        self.retry_exceptions: Any = False
        self.sched_key = ""
        self.cancelled = False
        self.lease = None
        self.finished = False
        self.parent = None
        self.cell = None  # the notebook cell that submitted it (dict), if any
        # The submitter's contextvars when a notebook cell submitted it: the task's output and
        # warnings are written in it, so a kernel (ipykernel keeps the cell's message header
        # in a contextvar) shows them under that cell, not under whichever cell runs now.
        self.context = None
        self.pg = None  # [pg id, bundles, strategy, name]: its child tasks go into this placement group
        self.strategy = None  # None (DEFAULT), "SPREAD" or ["node", node id, soft]
        for k, v in kw.items():
            setattr(self, k, v)


class ActorTaskSpec(TaskSpec):
    """A call of an actor's method."""

    __slots__ = ("actor_id", "method")


def return_ids(task_id: bytes, num_returns: int) -> tuple[bytes, ...]:
    """The object ids of a task's results: its id plus the result's index."""
    if num_returns <= 1:
        return (task_id + _FIRST,)
    return tuple(task_id + i.to_bytes(4, "little") for i in range(num_returns))


_FIRST = (0).to_bytes(4, "little")


def unpack_refs(refs: list, num_returns: int) -> Any:
    """What `.remote()` returns: one ref, None (num_returns=0) or the list."""
    if num_returns == 1:
        return refs[0]
    return None if num_returns == 0 else refs
