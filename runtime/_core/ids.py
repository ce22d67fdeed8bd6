"""Typed ids. All are random bytes; `.hex()` is the printable form."""

from __future__ import annotations

import os


class BaseID(bytes):
    SIZE = 16
    __slots__ = ()

    @classmethod
    def new(cls):  # noqa: ANN206
        return cls(os.urandom(cls.SIZE))

    @classmethod
    def from_hex(cls, text: str):  # noqa: ANN206
        return cls(bytes.fromhex(text))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.hex()[:12]})"


class JobID(BaseID):
    SIZE = 4


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
