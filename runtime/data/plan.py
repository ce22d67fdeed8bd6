"""The execution plan under a `Dataset`: its sources, the stage boundaries among them, and the
task that makes one block.

A dataset is a list of sources (a read task, a stored block's ObjectRef, a `_Bound` source of
a union, or a `Stage`) and a chain of per-block operators. This module knows how those turn
into block-making tasks; dataset.py only decides what the plan is. It sits below dataset.py
and the operator modules (actor_pool.py, all_to_all.py, grouped.py) so that they can build
stages and run blocks without importing the `Dataset` class.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from .._core.object_ref import ObjectRef
from . import block as B
from .remote_args import merged

if TYPE_CHECKING:
    from .dataset import Dataset


@dataclass
class _Bound:
    """A source with operators of its own (the part of a union that came from one dataset)."""

    source: Any
    ops: tuple


class Stage:
    """A source standing for the blocks a stage boundary makes when the dataset is executed
    (an actor pool, an all-to-all exchange): `_expand` (run by `Dataset._stream`, and by an
    actor pool for its parent's blocks) turns it into its blocks, and the operators after it
    apply to each of them, as for any other source."""

    def num_blocks(self) -> int | None:
        """How many blocks it makes, if known without running anything (for progress)."""
        return None

    def blocks(self, *, tasks_after: bool) -> Iterator[tuple[ObjectRef, ObjectRef]]:
        """(block ref, row-count ref) per block, in order. A generator: it is closed when the
        consumer stops early, so it releases what it holds in `finally`. `tasks_after`: tasks
        will run on these blocks meanwhile (a stage holding CPUs must leave them room)."""
        raise NotImplementedError


@dataclass
class _Made:
    """A block a stage has made (or is making): its ref and its row-count ref."""

    block: ObjectRef
    rows: ObjectRef


def _expand(sources: list, ops: tuple) -> Iterator[tuple[Any, tuple]]:
    """(source, operators) per block: unions unwrapped, stages expanded into `_Made` blocks."""
    for src in sources:
        src_ops = ops
        while isinstance(src, _Bound):
            src, src_ops = src.source, src.ops + src_ops
        if not isinstance(src, Stage):
            yield src, src_ops
            continue
        with contextlib.closing(src.blocks(tasks_after=bool(src_ops))) as made:
            for block, rows in made:
                yield _Made(block, rows), src_ops


def _submit(run: Any, src: Any, ops: tuple) -> tuple[ObjectRef, ObjectRef]:
    """The task making one block; a stage's block with no operators after it needs none. It
    asks for the largest demand of its source and operators (remote_args.py)."""
    if isinstance(src, _Made):
        if not ops:
            return src.block, src.rows
        src = src.block
    options = merged([getattr(x, "remote_args", None) or {} for x in (src, *ops)])
    return tuple(run.options(num_returns=2, **options).remote(src, ops))


def _unwrap(src: Any) -> Any:
    """The source under a union's `_Bound` wrappers (what kind of source it really is)."""
    while isinstance(src, _Bound):
        src = src.source
    return src


def _count_blocks(ds: Dataset) -> int | None:
    """The number of blocks the dataset makes, None where a stage cannot tell in advance."""
    total = 0
    for src in map(_unwrap, ds._sources):
        n = src.num_blocks() if isinstance(src, Stage) else 1
        if n is None:
            return None
        total += n
    return total


def _has_stages(ds: Dataset) -> bool:
    """Whether a stage boundary (which may hold CPUs, as an actor pool does) is among the sources."""
    return any(isinstance(_unwrap(s), Stage) for s in ds._sources)


def _execute(source: Any, ops: tuple) -> tuple[pa.Table, int]:
    """In a worker: make (or receive) one block and apply every operator to it."""
    blk = source() if callable(source) else source
    if not isinstance(blk, pa.Table):
        blk = B.from_batch(blk, "a read task")
    for op in ops:
        blk = op(blk)
    blk = B.compact(blk)  # stored next: not with the buffers of blocks it was sliced from
    return blk, blk.num_rows


# One remote function per plain function, made on first use: runtime.remote pickles and
# registers the function, which is worth doing once, not once per block.
_REMOTES: dict = {}


def _remote(fn: Callable) -> Any:
    if fn not in _REMOTES:
        import runtime
        _REMOTES[fn] = runtime.remote(fn)
    return _REMOTES[fn]

