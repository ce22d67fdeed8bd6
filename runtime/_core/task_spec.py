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


class TaskKind:
    """What every task of one remote function with one set of options has in common: kept once
    and shared (kind_of), not once per queued task."""

    __slots__ = ("name", "fid", "fn_blob", "demand", "env", "strategy", "sched_key", "retry_exceptions")

    def __init__(self, name: str, fid: bytes = b"", fn_blob: bytes = b"", demand: dict | None = None,
                 env: dict | None = None, strategy: Any = None, sched_key: str = "", retry_exceptions: Any = False) -> None:
        self.name, self.fid, self.fn_blob = name, fid, fn_blob
        self.demand = {} if demand is None else demand
        self.env = {} if env is None else env
        self.strategy = strategy  # None (DEFAULT), "SPREAD" or ["node", node id, soft]
        self.sched_key = sched_key
        self.retry_exceptions = retry_exceptions


_KINDS: dict[tuple, TaskKind] = {}
_KIND_FIELDS = TaskKind.__slots__


def kind_of(**fields: Any) -> TaskKind:
    """The shared TaskKind with these fields (up to 4,096 distinct ones are kept; the sched_key
    stands for demand, env and strategy, the fid for the blob)."""
    rx = fields.get("retry_exceptions", False)
    key = (fields.get("name"), fields.get("fid", b""), fields.get("sched_key", ""),
           tuple(rx) if isinstance(rx, (list, tuple)) else rx)
    try:
        kind = _KINDS.get(key)
    except TypeError:  # an unhashable retry_exceptions: this task's own
        return TaskKind(**fields)
    if kind is None:
        kind = TaskKind(**fields)
        if len(_KINDS) < 4096:
            _KINDS[key] = kind
    return kind


def _shared(field: str) -> property:
    return property(lambda spec: getattr(spec.kind, field), doc=f"TaskKind.{field}, shared by tasks of a kind")


class TaskSpec:
    """A normal task as its owner keeps it while it is pending: the most numerous object of a
    driver that queues many tasks, so each slot (8 bytes per queued task) counts. What tasks of
    one function and options share is one TaskKind; fields only actor calls have live on
    ActorTaskSpec."""

    __slots__ = (
        "task_id", "parent", "kind", "args_meta", "args_bufs", "deps", "nested", "return_ids", "max_retries",
        "cancelled", "lease", "finished", "cell", "pg", "context",
    )
    actor_id = ""  # an ActorTaskSpec's are its own
    method = ""
    is_actor_creation = False  # actors are created by the control store, not from a spec
    name, fid, fn_blob = _shared("name"), _shared("fid"), _shared("fn_blob")
    demand, env, strategy = _shared("demand"), _shared("env"), _shared("strategy")
    sched_key, retry_exceptions = _shared("sched_key"), _shared("retry_exceptions")

    def __init__(self, **kw: Any) -> None:
        """Fields by name; `kind=` a shared TaskKind, or its fields (name=, demand=, ...) for one of
        its own."""
        if "kind" not in kw:
            kw["kind"] = TaskKind(**{k: kw.pop(k) for k in _KIND_FIELDS if k in kw})
        self.nested: list | tuple = ()  # the refs inside its arguments (empty: the shared ())
        self.deps: list | tuple = ()  # its top-level ObjectRef arguments
        self.max_retries = 0
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
