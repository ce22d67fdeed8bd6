"""Typed ids; `.hex()` is the printable form.

An id is a random per-process prefix followed by a counter. Drawing fresh random bytes for
every task would be a `getrandom` system call, which releases the GIL in the middle of
submitting a task and lets the io thread take it. The prefix is drawn again in a forked
child, so processes never share one.
"""

from __future__ import annotations

import itertools
import os

_PREFIX_BYTES = 8


def _reseed() -> None:
    global _prefix, _counter
    _prefix = os.urandom(_PREFIX_BYTES)
    _counter = itertools.count()


_reseed()
os.register_at_fork(after_in_child=_reseed)


class BaseID(bytes):
    SIZE = 16
    __slots__ = ()

    @classmethod
    def new(cls):  # noqa: ANN206
        # A put's ObjectID ends in ff ff ff ff, which no task return index (0, 1, ...) can.
        return cls((_prefix + next(_counter).to_bytes(8, "little")).ljust(cls.SIZE, b"\xff"))

    @classmethod
    def from_hex(cls, text: str):  # noqa: ANN206
        return cls(bytes.fromhex(text))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.hex()[:12]})"


class JobID(BaseID):
    SIZE = 4

    @classmethod
    def new(cls):  # noqa: ANN206 - rare, and short: a counter tail would repeat across processes
        return cls(os.urandom(cls.SIZE))


class NodeID(BaseID):
    pass


class WorkerID(BaseID):
    pass


class ActorID(BaseID):
    pass


class TaskID(BaseID):
    pass


class ObjectID(BaseID):
    SIZE = 20
