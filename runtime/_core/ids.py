"""Typed ids; `.hex()` is the printable form.

An id is a per-process counter, scrambled, followed by a random per-process suffix. Drawing
fresh random bytes for every task would be a `getrandom` system call, which releases the GIL
in the middle of submitting a task and lets the io thread take it. The counter goes through
an odd multiplier (a bijection mod 2**64, so still unique) so that ids differ in their first
characters, which is what short forms like `Actor 3f9a02c1` show. The random parts are drawn
again in a forked child, so processes never share them.
"""

from __future__ import annotations

import itertools
import os

_PREFIX_BYTES = 8


_MULT = 0x9E3779B97F4A7C15  # odd: n -> n * _MULT mod 2**64 is one-to-one
_MASK = (1 << 64) - 1


def _reseed() -> None:
    global _prefix, _counter
    _prefix = os.urandom(_PREFIX_BYTES)
    start = int.from_bytes(os.urandom(8), "little")
    _counter = itertools.count(start)


_reseed()
os.register_at_fork(after_in_child=_reseed)


class BaseID(bytes):
    SIZE = 16
    __slots__ = ()

    @classmethod
    def new(cls):  # noqa: ANN206
        return cls(cls.new_bytes())

    @classmethod
    def new_bytes(cls) -> bytes:
        """A new id as plain bytes: 49 bytes of memory where an instance of this class takes 73
        (a queued task's id lives as long as the task)."""
        # A put's ObjectID ends in ff ff ff ff, which no task return index (0, 1, ...) can.
        return (((next(_counter) * _MULT) & _MASK).to_bytes(8, "little") + _prefix).ljust(cls.SIZE, b"\xff")

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
