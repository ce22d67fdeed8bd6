"""All-to-all operators: every output block may need rows from every input block.

Such an operator is an `AllToAll` stage (plan.py's `Stage`): a lazy source that sits in the
new dataset's `_sources`. Nothing runs when it is made. When execution reaches it, `_stream`
asks it for its blocks, and its `plan`

1. streams the parent dataset through the parent's own `_stream` (so the parent keeps its
   bounded window and its fused per-block operators), and runs the *map side* as runtime
   tasks on each block ref as it arrives: a task that splits the block into one part per
   output block (by key range, at random, or by row position), returning the parts as
   separate objects (`num_returns=N`);
2. then yields one `ReduceTask` per output block, holding the refs of its parts. They are
   submitted one by one as `_stream`'s window asks for blocks; each concatenates its parts
   and sorts (shuffles, aggregates, zips...) them. Operators after the stage run on its
   blocks as on any stored block.

What is materialized: the map side's parts (the whole dataset, in the object store, spilled if
it does not fit) until the reduce task that reads them has run; `sort` also holds the parent's
blocks until the boundaries are known (it samples every block first). `groupby` aggregations
(grouped.py) partially aggregate each block on the map side, so only one row per group and
block is kept.

Part tables are made with `take` (a copy), never `slice`: a sliced Arrow table pickles the
buffers of the whole table it was cut from.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .._core.object_ref import ObjectRef
from . import block as B
# key_list and require_columns were defined here; kept importable from here by their old names.
from .block import key_list, require_columns  # noqa: F401
from .plan import Stage, _count_blocks, _remote

if TYPE_CHECKING:  # the operators take and make datasets but never import the class (dataset.py imports them)
    from .dataset import Dataset

SAMPLE_ROWS_PER_BLOCK = 100  # keys sampled from each block to choose the sort's range boundaries
_MARK = "__orrery_boundary__"  # helper column: tells boundary rows from data rows while sorting both


# -- stages and reduce tasks -----------------------------------------------------------------

@dataclass
class ReduceTask:
    """One output block: `fn(arg, inputs)` run in a task on the blocks behind `inputs`."""

    fn: Callable[[Any, list[pa.Table]], pa.Table]  # a module-level function (pickled by name)
    arg: Any
    inputs: list[ObjectRef] = field(default_factory=list)


class AllToAll(Stage):
    """A lazy all-to-all source: `plan()` runs the map side and yields the ReduceTasks, which
    `blocks` submits one at a time, as `_stream`'s window asks for blocks."""

    def __init__(self, name: str, plan: Callable[[], Iterator[ReduceTask]], num_blocks: int | None = None) -> None:
        self.name, self.plan, self._num_blocks = name, plan, num_blocks

    def num_blocks(self) -> int | None:
        return self._num_blocks

    def blocks(self, *, tasks_after: bool) -> Iterator[tuple[ObjectRef, ObjectRef]]:
        run = _remote(_reduce).options(num_returns=2)
        with contextlib.closing(self.plan()) as tasks:
            for task in tasks:
                yield tuple(run.remote(task.fn, task.arg, *task.inputs))


def _reduce(fn: Callable, arg: Any, *inputs: pa.Table) -> tuple[pa.Table, int]:
    """In a worker: make one output block from its parts."""
    blk = fn(arg, list(inputs))
    return blk, blk.num_rows


def staged(parent: Dataset, name: str, plan: Callable[[], Iterator[ReduceTask]],
           num_blocks: int | None = None) -> Dataset:
    """A dataset whose only source is the all-to-all stage `plan` on `parent` (made by the
    parent, so this module need not import the Dataset class)."""
    return parent._staged(AllToAll(name, plan, num_blocks), name)


def _empty_task() -> ReduceTask:
    """The single block of a stage whose input had no rows."""
    return ReduceTask(_concat, None, [])


def _concat(_arg: Any, inputs: list[pa.Table]) -> pa.Table:
    return B.concat(inputs)


def _split_remote(fn: Callable, n: int, *args: Any) -> list[ObjectRef]:
    """Run `fn(*args, n)` (which returns n tables) as a task; the n result refs."""
    refs = _remote(fn).options(num_returns=n).remote(*args, n)
    return [refs] if n == 1 else list(refs)


def _take_parts(block: pa.Table, part_of_row: np.ndarray, n: int) -> tuple[pa.Table, ...]:
    """The rows of `block` as n tables, row i into part part_of_row[i] (order kept within a part)."""
    order = np.argsort(part_of_row, kind="stable")
    bounds = np.cumsum(np.bincount(part_of_row, minlength=n))[:-1]
    return tuple(block.take(pa.array(rows)) for rows in np.split(order, bounds))


def _copy_rows(block: pa.Table, start: int, length: int) -> pa.Table:
    return block.take(pa.array(np.arange(start, start + length, dtype=np.int64)))


# -- argument checks (key_list and require_columns are block.py's, shared with grouped.py) ----

def _orders(keys: list[str], descending: Any) -> list[tuple[str, str]]:
    flags = [descending] * len(keys) if isinstance(descending, bool) else descending
    if not isinstance(flags, (list, tuple)) or len(flags) != len(keys) or not all(isinstance(d, bool) for d in flags):
        raise ValueError(f"sort: descending must be a bool or a list of {len(keys)} bools (one per key), "
                         f"got {descending!r}.")
    return [(k, "descending" if d else "ascending") for k, d in zip(keys, flags)]


# -- range partitioning (sort, groupby, map_groups) ------------------------------------------

def _sample(block: pa.Table, keys: list[str], what: str) -> pa.Table:
    """Up to SAMPLE_ROWS_PER_BLOCK rows of the key columns, evenly spaced (checks the keys)."""
    require_columns(block, keys, what)
    n = block.num_rows
    picks = np.unique(np.linspace(0, n - 1, min(n, SAMPLE_ROWS_PER_BLOCK)).astype(np.int64))
    return block.select(keys).take(pa.array(picks))


def boundaries(samples: list[pa.Table], orders: list[tuple[str, str]], n: int, *, distinct: bool = False
               ) -> pa.Table:
    """At most n-1 key rows cutting the sorted samples into n ranges of about equal size.

    distinct=True (groupby): no two boundaries are equal, so no range is empty by design.
    """
    keys = [k for k, _ in orders]
    s = B.concat(samples).select(keys)
    if distinct:
        s = s.group_by(keys, use_threads=False).aggregate([])
    s = s.sort_by(orders)
    positions = sorted({s.num_rows * i // n for i in range(1, n)} - ({0} if distinct else set()))
    return s.take(pa.array(positions, type=pa.int64()))


def split_by_range(block: pa.Table, orders: list[tuple[str, str]], bounds: pa.Table, n: int
                   ) -> tuple[pa.Table, ...]:
    """The block sorted and cut into n = len(bounds)+1 parts: part i holds the rows between
    boundary i-1 and boundary i in sort order.

    The key columns and the boundaries are sorted together (Arrow's sort, so nulls, NaN,
    multiple keys and descending order go exactly as in the final sort); a row's part is the
    number of boundaries sorted before it. A row equal to a boundary sorts after it (the helper
    column breaks the tie), in every block alike, so equal keys always land in the same part.
    """
    rows = block.num_rows
    keys = [k for k, _ in orders]
    keyed = pa.concat_tables([block.select(keys), bounds.select(keys)], promote_options="permissive")
    keyed = keyed.append_column(_MARK, pa.array(np.r_[np.ones(rows, np.int8), np.zeros(bounds.num_rows, np.int8)]))
    order = pc.sort_indices(keyed, sort_keys=orders + [(_MARK, "ascending")]).to_numpy()
    is_bound = order >= rows
    part_sorted = np.cumsum(is_bound)[~is_bound]  # the part of each data row, in sorted order
    cuts = np.searchsorted(part_sorted, np.arange(1, n))
    return tuple(block.take(pa.array(rows_of_part)) for rows_of_part in np.split(order[~is_bound], cuts))


def _range_split_task(block: pa.Table, orders: list, bounds: pa.Table, n: int) -> Any:
    parts = split_by_range(block, orders, bounds, n)
    return parts if n > 1 else parts[0]


# -- sort ------------------------------------------------------------------------------------

def sort(ds: Dataset, key: Any, descending: Any = False, *, what: str = "sort") -> Dataset:
    """`what` names the operator in errors (map_groups sorts too)."""
    orders = _orders(key_list(key, what), descending)
    name = f"Sort({', '.join(k + (' desc' if o == 'descending' else '') for k, o in orders)})"
    return staged(ds, name, functools.partial(_sort_plan, ds, orders, what))


def _sort_plan(parent: Dataset, orders: list[tuple[str, str]], what: str) -> Iterator[ReduceTask]:
    """Sample every block, choose boundaries, range-partition every block, sort each range."""
    import runtime
    keys = [k for k, _ in orders]
    sample = _remote(_sample)
    held, first = [], None
    for ref, rows in parent._stream():
        first = ref if first is None else first
        if rows:
            held.append((ref, sample.remote(ref, keys, what)))
    if not held:  # no rows: one empty block, with the columns the input has
        yield _gather_task([(first, 0)], 0, 0) if first is not None else _empty_task()
        return
    del first
    n = len(held)
    bounds = boundaries(runtime.get([s for _, s in held]), orders, n)
    n = bounds.num_rows + 1
    parts = [_split_remote(_range_split_task, n, ref, orders, bounds) for ref, _ in held]
    del held  # the parent's blocks are freed once their partition tasks have run
    for j in range(n):
        yield ReduceTask(_sort_parts, orders, [p[j] for p in parts])


def _sort_parts(orders: list[tuple[str, str]], inputs: list[pa.Table]) -> pa.Table:
    return B.concat(inputs).sort_by(orders)


# -- random shuffle and repartition ----------------------------------------------------------

def random_shuffle(ds: Dataset, seed: int | None = None, num_blocks: int | None = None) -> Dataset:
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or seed < 0):
        raise ValueError(f"random_shuffle: seed must be None or a non-negative int, got {seed!r}.")
    if num_blocks is not None:
        _check_num_blocks(num_blocks, "random_shuffle")
    n = num_blocks or _count_blocks(ds)
    return staged(ds, "RandomShuffle", functools.partial(_shuffle_plan, ds, seed, n), n)


def _shuffle_plan(parent: Dataset, seed: int | None, n: int | None) -> Iterator[ReduceTask]:
    """Each block's rows go to random output blocks; each output block is then permuted.

    The seeds of both steps derive from `seed` and the block's position, so a seed gives the
    same order every time the same data is shuffled; without one, each execution differs.
    """
    base = secrets.randbits(63) if seed is None else seed
    blocks = parent._stream()
    if n is None:  # the parent's block count is known only once it has run
        blocks = list(blocks)
        n = max(1, len(blocks))
    parts = [_split_remote(_random_split_task, n, ref, (base, 0, i))
             for i, (ref, rows) in enumerate(blocks) if rows]
    for j in range(n):
        yield ReduceTask(_permute, (base, 1, j), [p[j] for p in parts])


def _random_split_task(block: pa.Table, seed: tuple, n: int) -> Any:
    part = np.random.default_rng(list(seed)).integers(0, n, block.num_rows)
    parts = _take_parts(block, part, n)
    return parts if n > 1 else parts[0]


def _permute(seed: tuple, inputs: list[pa.Table]) -> pa.Table:
    t = B.concat(inputs)
    return t.take(pa.array(np.random.default_rng(list(seed)).permutation(t.num_rows)))


def _check_num_blocks(num_blocks: Any, what: str) -> None:
    if not isinstance(num_blocks, int) or isinstance(num_blocks, bool) or num_blocks < 1:
        raise ValueError(f"{what}: num_blocks must be a positive int, got {num_blocks!r}.")


def repartition(ds: Dataset, num_blocks: int, shuffle: bool = False) -> Dataset:
    _check_num_blocks(num_blocks, "repartition")
    if shuffle:
        return random_shuffle(ds, num_blocks=num_blocks)
    plan = functools.partial(_repartition_plan, ds, num_blocks)
    return staged(ds, f"Repartition({num_blocks})", plan, num_blocks)


def _repartition_plan(parent: Dataset, n: int) -> Iterator[ReduceTask]:
    """n blocks of nearly equal row counts, rows in order: output j copies its rows' slices."""
    blocks = [(ref, rows) for ref, rows in parent._stream() if rows]
    total = sum(rows for _, rows in blocks)
    for j in range(n):
        yield _gather_task(blocks, total * j // n, total * (j + 1) // n)


# -- row-position plans (repartition, split_at_indices, zip) ---------------------------------

def _pieces(blocks: list[tuple[ObjectRef, int]], lo: int, hi: int) -> tuple[list[ObjectRef], list[tuple[int, int]]]:
    """The blocks holding rows [lo, hi) of the concatenated blocks, and (start, length) in each."""
    refs, spec, start = [], [], 0
    for ref, rows in blocks:
        a, b = max(lo, start), min(hi, start + rows)
        if a < b:
            refs.append(ref)
            spec.append((a - start, b - a))
        start += rows
    return refs, spec


def _gather_task(blocks: list[tuple[ObjectRef, int]], lo: int, hi: int) -> ReduceTask:
    """Rows [lo, hi) as one block; an empty range keeps the schema of the first block."""
    refs, spec = _pieces(blocks, lo, hi)
    if not refs and blocks:
        refs, spec = [blocks[0][0]], [(0, 0)]
    return ReduceTask(_gather, spec, refs)


def _gather(spec: list[tuple[int, int]], inputs: list[pa.Table]) -> pa.Table:
    return B.concat([_copy_rows(b, start, length) for b, (start, length) in zip(inputs, spec)])


class _Once:
    """A dataset's blocks, run on first use and then kept: the pieces of split_at_indices
    share one execution (Ray materializes the dataset for it)."""

    def __init__(self, ds: Dataset) -> None:
        self._ds = ds
        self._blocks: list[tuple[ObjectRef, int]] | None = None

    def blocks(self) -> list[tuple[ObjectRef, int]]:
        if self._blocks is None:
            self._blocks = list(self._ds._stream())
        return self._blocks


def split_at_indices(ds: Dataset, indices: Any) -> list[Dataset]:
    if (not isinstance(indices, (list, tuple)) or not indices
            or not all(isinstance(i, int) and not isinstance(i, bool) for i in indices)):
        raise ValueError(f"split_at_indices: indices must be a non-empty list of ints, got {indices!r}.")
    if any(i < 0 for i in indices):
        raise ValueError(f"split_at_indices: indices must be non-negative row positions, got {list(indices)}.")
    if list(indices) != sorted(indices):
        raise ValueError(f"split_at_indices: indices must be sorted in ascending order, got {list(indices)}.")
    shared = _Once(ds)
    cuts = [0, *indices, None]
    return [staged(ds, f"SplitAtIndices[{lo}:{'' if hi is None else hi}]",
                   functools.partial(_piece_plan, shared, lo, hi))
            for lo, hi in itertools.pairwise(cuts)]


def _piece_plan(shared: _Once, lo: int, hi: int | None) -> Iterator[ReduceTask]:
    """Rows [lo, hi) (clipped to the dataset, like numpy.split), one block per input block."""
    blocks = [(ref, rows) for ref, rows in shared.blocks() if rows]
    total = sum(rows for _, rows in blocks)
    lo, hi = min(lo, total), total if hi is None else min(hi, total)
    refs, spec = _pieces(blocks, lo, hi)
    if not refs:
        yield _gather_task(blocks, 0, 0)
    for ref, piece in zip(refs, spec):
        yield ReduceTask(_gather, [piece], [ref])


def zip_datasets(left: Dataset, right: Dataset) -> Dataset:
    """Row i of left beside row i of right (Dataset.zip checks that right is a Dataset)."""
    return staged(left, "Zip", functools.partial(_zip_plan, left, right))


def _zip_plan(left: Dataset, right: Dataset) -> Iterator[ReduceTask]:
    """Output blocks follow the left dataset's blocks; each gets the right's rows at the same
    positions."""
    lb = [(ref, rows) for ref, rows in left._stream()]
    rb = [(ref, rows) for ref, rows in right._stream()]
    nl, nr = sum(r for _, r in lb), sum(r for _, r in rb)
    if nl != nr:
        raise ValueError(f"zip: the datasets have different numbers of rows ({nl} and {nr}); "
                         "zip pairs rows by position, so both must have the same number of rows.")
    if nl == 0:  # one empty block with the columns of both (a dataset always yields a block)
        yield ReduceTask(_zip_block, [(0, 0)], [lb[0][0], rb[0][0]])
        return
    start = 0
    for ref, rows in lb:
        if rows:
            refs, spec = _pieces(rb, start, start + rows)
            yield ReduceTask(_zip_block, spec, [ref, *refs])
            start += rows


def _zip_block(spec: list[tuple[int, int]], inputs: list[pa.Table]) -> pa.Table:
    """The left block's columns, then the right rows' columns; a right column whose name is
    taken gets the first free suffix _1, _2, ... (as Ray does)."""
    out, right = inputs[0], _gather(spec, inputs[1:])
    if right.num_columns and out.num_columns == 0:
        return right
    for name in right.column_names:
        new, i = name, 1
        while new in out.column_names:
            new, i = f"{name}_{i}", i + 1
        out = out.append_column(new, right.column(name))
    return out
