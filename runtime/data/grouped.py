"""`Dataset.groupby(key)`: `GroupedData` (Ray's `ray.data.grouped_data.GroupedData`).

Aggregations run as an all-to-all stage (all_to_all.py) with map-side partial aggregation
(aggregate.py): each block is reduced to one row of states per group as it streams in, in
the task that makes it (fused after its other operators), so the full data is never held. The partial tables are then combined: by one task when they are
small (at most `DataContext.target_max_block_rows` rows in all, the usual case of few
groups), else range-partitioned by key like a sort, one combine task per key range. Either
way the output is sorted by the key, across blocks.

`map_groups` needs every row of a group at once: it sorts the dataset by the key (equal keys
always land in the same block) and calls the function on each group of each sorted block.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from . import aggregate as A
from . import all_to_all
from . import block as B
from .all_to_all import ReduceTask, boundaries
from .context import DataContext
from .plan import _remote

if TYPE_CHECKING:  # grouped datasets are made by the parent (Dataset._staged, _with): no import of the class
    from .dataset import Dataset
from .remote_args import takes_remote_args


class GroupedData:
    """The rows of a dataset grouped by `key` (a column, a list of columns, or None: one group
    of every row)."""

    def __init__(self, dataset: Dataset, key: str | list[str] | None) -> None:
        self._dataset = dataset
        self._keys = [] if key is None else B.key_list(key, "groupby")

    def __repr__(self) -> str:
        return f"GroupedData(dataset={self._dataset!r}, key={self._keys!r})"

    def aggregate(self, *aggs: A.AggregateFn) -> Dataset:
        """One row per group: the key columns, then one column per aggregation (its name)."""
        if not aggs or not all(isinstance(a, A.AggregateFn) for a in aggs):
            raise TypeError("aggregate: pass one or more aggregations from runtime.data.aggregate "
                            f"(Count(), Sum('x'), ...), got {aggs!r}.")
        keys, aggs_ = self._keys, list(aggs)
        name = f"Aggregate({', '.join(a.name for a in aggs_)})"
        return all_to_all.staged(self._dataset, name, functools.partial(_aggregate_plan, self._dataset, keys, aggs_))

    def count(self) -> Dataset:
        return self.aggregate(A.Count())

    def sum(self, on: str | list[str] | None = None, ignore_nulls: bool = True) -> Dataset:
        return self.aggregate(*(A.Sum(c, ignore_nulls) for c in self._on_list(on, "sum")))

    def min(self, on: str | list[str] | None = None, ignore_nulls: bool = True) -> Dataset:
        return self.aggregate(*(A.Min(c, ignore_nulls) for c in self._on_list(on, "min")))

    def max(self, on: str | list[str] | None = None, ignore_nulls: bool = True) -> Dataset:
        return self.aggregate(*(A.Max(c, ignore_nulls) for c in self._on_list(on, "max")))

    def mean(self, on: str | list[str] | None = None, ignore_nulls: bool = True) -> Dataset:
        return self.aggregate(*(A.Mean(c, ignore_nulls) for c in self._on_list(on, "mean")))

    def std(self, on: str | list[str] | None = None, ddof: int = 1, ignore_nulls: bool = True) -> Dataset:
        return self.aggregate(*(A.Std(c, ddof, ignore_nulls) for c in self._on_list(on, "std")))

    def _on_list(self, on: Any, what: str) -> list[str]:
        """The columns to aggregate: those named, or (None) every column but the keys, as Ray."""
        if on is not None:
            return B.key_list(on, what)
        columns = [c for c in self._dataset.columns() if c not in self._keys]
        if not columns:
            raise ValueError(f"{what}: there is no column to aggregate besides the keys {self._keys}; "
                             "name the column(s) with on='x' or on=['x', 'y'].")
        return columns

    @takes_remote_args(keywords=("num_cpus", "num_gpus", "memory", "concurrency", "ray_remote_args_fn"))
    def map_groups(self, fn: Callable[[Any], Any], *, zero_copy_batch: bool = False, compute: Any = None,
                   batch_format: str = "default", fn_args: tuple = (), fn_kwargs: dict | None = None,
                   fn_constructor_args: tuple = (), fn_constructor_kwargs: dict | None = None,
                   _remote_args: dict) -> Dataset:
        """`fn` on each group as one batch (`batch_format` as in map_batches); the outputs,
        group after group in key order, form the dataset. A callable class is built once per
        worker process (fn_constructor_args/kwargs); compute= (an actor pool) is not built for
        map_groups and says so; task options as map_batches'."""
        if compute is not None and compute != "tasks":
            raise ValueError("map_groups(compute=...) is not supported: groups are mapped in tasks. Drop compute=, "
                             "or map_batches the sorted dataset on an actor pool.")
        if batch_format not in B.BATCH_FORMATS:
            raise ValueError(f"map_groups: batch_format must be one of {', '.join(B.BATCH_FORMATS)}, "
                             f"got {batch_format!r}.")
        keys, kwargs = self._keys, fn_kwargs or {}
        name = f"MapGroups({getattr(fn, '__name__', type(fn).__name__)})"
        ds = all_to_all.sort(self._dataset, keys, what="map_groups") if keys else self._dataset.repartition(1)

        built: list = []

        def op(block: pa.Table) -> pa.Table:
            if isinstance(fn, type) and not built:  # a callable class: one instance per worker process
                built.append(fn(*fn_constructor_args, **(fn_constructor_kwargs or {})))
            call = built[0] if built else fn
            outs = []
            for i, group in enumerate(_groups(block, keys)):
                out = call(B.to_batch(group, batch_format), *fn_args, **kwargs)
                outs.append(B.from_batch(out, f"{name} on group {i} of a block ({group.num_rows} rows)"))
            return B.concat(outs)

        return ds._with(op, name, _remote_args)


def _groups(block: pa.Table, keys: list[str]) -> Iterator[pa.Table]:
    """The groups of a block sorted by the keys: runs of equal keys (null keys included)."""
    if block.num_rows == 0:
        return
    if not keys:
        yield block
        return
    g = block.select(keys).append_column(A._ROW, pa.array(np.arange(block.num_rows, dtype=np.int64)))
    g = g.group_by(keys, use_threads=False).aggregate([(A._ROW, "list")])
    gid = A._group_ids(g.column(f"{A._ROW}_list"), block.num_rows)
    starts = np.flatnonzero(np.r_[True, gid[1:] != gid[:-1]])
    for a, b in zip(starts, np.r_[starts[1:], block.num_rows]):
        yield block.take(pa.array(np.arange(a, b)))  # a copy: a slice would pickle the whole block


# -- execution -------------------------------------------------------------------------------

def _aggregate_plan(parent: Dataset, keys: list[str], aggs: list[A.AggregateFn]) -> Iterator[ReduceTask]:
    """Partial aggregates per block, fused into the tasks that make the blocks (no task of its
    own), then one combine task, or one per key range when there are many groups."""
    import runtime
    partials = parent._with(functools.partial(_partial_op, keys, aggs), "PartialAggregate")
    got = [(ref, rows) for ref, rows in partials._stream() if rows]
    target = DataContext.get_current().target_max_block_rows
    n = min(len(got), -(-sum(rows for _, rows in got) // target))
    if not keys or n <= 1:
        yield ReduceTask(_combine, (keys, aggs), [ref for ref, _ in got])
        return
    orders = [(k, "ascending") for k in keys]
    sample = _remote(all_to_all._sample)
    bounds = boundaries(runtime.get([sample.remote(ref, keys, "groupby") for ref, _ in got]), orders, n, distinct=True)
    n = bounds.num_rows + 1
    parts = [all_to_all._split_remote(all_to_all._range_split_task, n, ref, orders, bounds) for ref, _ in got]
    for j in range(n):
        yield ReduceTask(_combine, (keys, aggs), [p[j] for p in parts])


def _partial_op(keys: list[str], aggs: list[A.AggregateFn], block: pa.Table) -> pa.Table:
    """In a worker, after the block's other operators: its partial aggregate (no rows: none)."""
    if block.num_rows == 0:
        return pa.table({})
    A.check_columns(block, keys, aggs, "groupby" if keys else "aggregate")
    return A.partial(block, keys, aggs)


def _combine(arg: tuple, inputs: list[pa.Table]) -> pa.Table:
    keys, aggs = arg
    return A.combine(inputs, keys, aggs)
