"""`Dataset`: a lazy plan over blocks (Arrow tables in the object store), executed by streaming.

A dataset is a list of sources (one per block: a read task, or the ObjectRef of a block
already stored) and a chain of per-block operators. Nothing runs until the data is consumed.
Then every source becomes one runtime task that reads (or receives) its block and applies all
the operators in one go (they are fused: one task per block, no intermediate blocks in the
store), and at most `max_blocks_in_flight` blocks are being made or waiting to be consumed at
any time, so a dataset larger than the object store streams through it.

A source may also be a `Stage`: a boundary the fusion stops at (a map_batches class on an
actor pool, an all-to-all exchange), which `_stream` expands into the blocks it makes.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import pyarrow as pa

from .._core.object_ref import ObjectRef
from . import block as B
from . import progress


@dataclass
class DataContext:
    """Execution settings (Ray's `DataContext.get_current()`)."""

    max_blocks_in_flight: int = 0  # 0: twice the cluster's CPUs
    target_max_block_rows: int = 200_000  # from_items / range split into blocks of about this size
    enable_progress_bars: bool = True  # progress of long consumptions (progress.py); Ray's name
    progress_bar_min_seconds: float = 1.0  # shown only once the work has taken this long

    _current: ClassVar[DataContext | None] = None

    @classmethod
    def get_current(cls) -> DataContext:
        if cls._current is None:
            cls._current = cls()
        return cls._current


@dataclass
class _Stats:
    blocks: int = 0
    rows: int = 0
    seconds: float = 0.0


class Dataset:
    _known_schema: pa.Schema | None = None  # set where the blocks' schema is known without running anything

    def __init__(self, sources: list, ops: tuple = (), names: tuple = ()) -> None:
        self._sources = sources  # each: a zero-argument callable returning a block, a block's ObjectRef, a Stage
        self._ops = ops  # per-block functions block -> block, applied in order
        self._names = names
        self._last_stats: _Stats | None = None

    def __repr__(self) -> str:
        chain = " -> ".join(("Read",) + self._names)
        return f"Dataset(num_blocks={_count_blocks(self)}, plan={chain})"

    # -- transforms (lazy) -----------------------------------------------------------------
    def _with(self, op: Callable[[pa.Table], pa.Table], name: str) -> Dataset:
        return Dataset(self._sources, self._ops + (op,), self._names + (name,))

    def map_batches(self, fn: Any, *, batch_size: int | None | str = "default", batch_format: str = "default",
                    fn_args: tuple = (), fn_kwargs: dict | None = None, fn_constructor_args: tuple = (),
                    fn_constructor_kwargs: dict | None = None, compute: Any = None, zero_copy_batch: bool = False,
                    concurrency: int | tuple | None = None, **_remote_args: Any) -> Dataset:
        """`fn` on batches of each block. A function (or a class without compute/concurrency,
        one instance per worker process) is fused into the per-block task; a class with
        `compute=ActorPoolStrategy(...)` or `concurrency=` runs on a pool of actors, a stage of
        its own (actor_pool.py)."""
        from .actor_pool import ActorStage, resolve_compute
        if batch_format not in B.BATCH_FORMATS:
            raise ValueError(f"map_batches: batch_format must be one of {', '.join(B.BATCH_FORMATS)}, "
                             f"got {batch_format!r}.")
        size = 4096 if batch_size == "default" else batch_size
        if size is not None and (not isinstance(size, int) or size <= 0):
            raise ValueError(f"map_batches: batch_size must be a positive int or None, got {batch_size!r}.")
        name = f"MapBatches({getattr(fn, '__name__', type(fn).__name__)})"
        is_class = isinstance(fn, type)
        fn_kwargs = fn_kwargs or {}
        ctor_kwargs = fn_constructor_kwargs or {}
        pool = resolve_compute(fn, compute, concurrency, name)
        if pool is not None:  # a stage boundary: the blocks so far go through the actors
            loop = (size, batch_format, tuple(fn_args), fn_kwargs, name)
            stage = ActorStage(self, fn, tuple(fn_constructor_args), ctor_kwargs, loop, pool, _remote_args)
            return Dataset([stage], (), self._names + (name,))

        def op(block: pa.Table, _state: dict = {}) -> pa.Table:  # noqa: B006 - per-process instance cache
            call = fn
            if is_class:  # a callable class: one instance per worker process, built on first use
                key = id(fn)
                if key not in _state:
                    _state[key] = fn(*fn_constructor_args, **ctor_kwargs)
                call = _state[key]
            return B.map_batches(call, block, size, batch_format, fn_args, fn_kwargs, name)

        return self._with(op, name)

    def map(self, fn: Callable[[dict], dict], **_remote_args: Any) -> Dataset:
        name = f"Map({getattr(fn, '__name__', 'fn')})"

        def op(block: pa.Table) -> pa.Table:
            return B.from_rows([_check_row(fn(r), name) for r in B.rows_of(block)], name)

        return self._with(op, name)

    def flat_map(self, fn: Callable[[dict], list], **_remote_args: Any) -> Dataset:
        name = f"FlatMap({getattr(fn, '__name__', 'fn')})"

        def op(block: pa.Table) -> pa.Table:
            rows = []
            for r in B.rows_of(block):
                out = fn(r)
                if not isinstance(out, (list, tuple)):
                    raise TypeError(f"{name} returned {type(out).__name__} for a row; expected a list of rows.")
                rows.extend(out)
            return B.from_rows(rows, name)

        return self._with(op, name)

    def filter(self, fn: Callable[[dict], bool], **_remote_args: Any) -> Dataset:
        name = f"Filter({getattr(fn, '__name__', 'fn')})"

        def op(block: pa.Table) -> pa.Table:
            keep = [bool(fn(r)) for r in B.rows_of(block)]
            return block.filter(pa.array(keep, type=pa.bool_())) if block.num_rows else block

        return self._with(op, name)

    def add_column(self, col: str, fn: Callable[[Any], Any], *, batch_format: str = "pandas") -> Dataset:
        def add(df: Any) -> Any:
            df[col] = fn(df)
            return df
        return self.map_batches(add, batch_format=batch_format, batch_size=None)

    def drop_columns(self, cols: list[str]) -> Dataset:
        def op(block: pa.Table) -> pa.Table:
            return _require_columns(block, cols, "drop_columns").drop_columns(cols)
        return self._with(op, f"DropColumns({cols})")

    def select_columns(self, cols: list[str]) -> Dataset:
        def op(block: pa.Table) -> pa.Table:
            return _require_columns(block, cols, "select_columns").select(cols)
        return self._with(op, f"SelectColumns({cols})")

    def union(self, *others: Dataset) -> Dataset:
        """The rows of this dataset, then of each other one (schemas must agree)."""
        parts = [self, *others]
        out = Dataset([_Bound(s, d._ops) for d in parts for s in d._sources], (), ("Union",))
        out._known_schema = _check_union_schemas(parts)
        return out

    def limit(self, n: int) -> Dataset:
        """The first n rows; the stream stops once they are made."""
        rows = list(self._iter_blocks(stop_after_rows=n))
        taken, out = 0, []
        for b in rows:
            out.append(b.slice(0, n - taken))
            taken += out[-1].num_rows
        return from_blocks(out)

    # -- all-to-all (see all_to_all.py) --
    def repartition(self, num_blocks: int, *, shuffle: bool = False) -> Dataset:
        """num_blocks blocks of nearly equal row counts, rows in order; shuffle=True shuffles
        the rows into them instead."""
        from . import all_to_all
        return all_to_all.repartition(self, num_blocks, shuffle)

    def random_shuffle(self, *, seed: int | None = None, num_blocks: int | None = None,
                       **_remote_args: Any) -> Dataset:
        """The rows in a random order (the same order every time for a given seed)."""
        from . import all_to_all
        return all_to_all.random_shuffle(self, seed, num_blocks)

    def sort(self, key: str | list[str], descending: bool | list[bool] = False) -> Dataset:
        """Rows sorted by the key column(s), across blocks; nulls last."""
        from . import all_to_all
        return all_to_all.sort(self, key, descending)

    def groupby(self, key: str | list[str] | None) -> Any:
        """A GroupedData (grouped.py); key None makes one group of every row."""
        from .grouped import GroupedData
        return GroupedData(self, key)

    def aggregate(self, *aggs: Any) -> dict:
        """The aggregations (runtime.data.aggregate) over all rows, as {name: value}."""
        return self.groupby(None).aggregate(*aggs).take_all()[0]

    def std(self, on: str | list[str] | None = None, ddof: int = 1, ignore_nulls: bool = True) -> Any:
        return self._aggregate("std", on, ignore_nulls, ddof=ddof)

    def zip(self, other: Dataset) -> Dataset:
        """Row i: the columns of row i of both datasets (taken names from other get _1, _2...)."""
        from . import all_to_all
        return all_to_all.zip_datasets(self, other)

    def split_at_indices(self, indices: list[int]) -> list[Dataset]:
        """Rows [0, i0), [i0, i1), ..., [ik, end) as len(indices)+1 datasets (as numpy.split)."""
        from . import all_to_all
        return all_to_all.split_at_indices(self, indices)

    # -- consumption -----------------------------------------------------------------------
    def iter_batches(self, *, batch_size: int | None = 256, batch_format: str = "default") -> Iterator[Any]:
        pending: list[pa.Table] = []
        held = 0
        for blk in self._iter_blocks():
            if batch_size is None:
                yield B.to_batch(blk, batch_format)
                continue
            pending.append(blk)
            held += blk.num_rows
            while held >= batch_size:
                merged = B.concat(pending)
                yield B.to_batch(merged.slice(0, batch_size), batch_format)
                rest = merged.slice(batch_size)
                pending, held = ([rest] if rest.num_rows else []), rest.num_rows
        if held:
            yield B.to_batch(B.concat(pending), batch_format)

    def iter_rows(self) -> Iterator[dict]:
        for blk in self._iter_blocks():
            yield from B.rows_of(blk)

    def take(self, limit: int = 20) -> list[dict]:
        out: list[dict] = []
        for blk in self._iter_blocks(stop_after_rows=limit):
            out.extend(B.rows_of(blk.slice(0, limit - len(out))))
            if len(out) >= limit:
                break
        return out

    def take_all(self) -> list[dict]:
        return list(self.iter_rows())

    def take_batch(self, batch_size: int = 20, *, batch_format: str = "default") -> Any:
        rows = self.limit(batch_size)
        return B.to_batch(B.concat(rows._blocks()), batch_format)

    def show(self, limit: int = 20) -> None:
        for row in self.take(limit):
            print(row)

    def count(self) -> int:
        return sum(b.num_rows for b in self._iter_blocks())

    def schema(self) -> pa.Schema | None:
        for blk in self._iter_blocks(stop_after_rows=1):
            return blk.schema
        return None

    def columns(self) -> list[str]:
        s = self.schema()
        return list(s.names) if s is not None else []

    def _aggregate(self, how: str, on: str | list[str] | None, ignore_nulls: bool, **kwargs: Any) -> Any:
        """Ray's `Dataset.sum/min/max/mean/std`: one column gives a value, a list of columns (or
        None: every column) a dict {"sum(col)": value}; values are None over no rows. Computed
        by tasks (partial aggregates per block), not in the driver."""
        from . import aggregate as A
        from .all_to_all import key_list
        cls = {"sum": A.Sum, "min": A.Min, "max": A.Max, "mean": A.Mean, "std": A.Std}[how]
        columns = self.columns() if on is None else key_list(on, how)
        if not columns:
            return None
        out = self.aggregate(*(cls(c, ignore_nulls=ignore_nulls, **kwargs) for c in columns))
        return out[f"{how}({on})"] if isinstance(on, str) else out

    def sum(self, on: str | list[str] | None = None, ignore_nulls: bool = True) -> Any:
        return self._aggregate("sum", on, ignore_nulls)

    def min(self, on: str | list[str] | None = None, ignore_nulls: bool = True) -> Any:
        return self._aggregate("min", on, ignore_nulls)

    def max(self, on: str | list[str] | None = None, ignore_nulls: bool = True) -> Any:
        return self._aggregate("max", on, ignore_nulls)

    def mean(self, on: str | list[str] | None = None, ignore_nulls: bool = True) -> Any:
        return self._aggregate("mean", on, ignore_nulls)

    def to_pandas(self) -> Any:
        return B.to_pandas(B.concat(list(self._iter_blocks())))

    def to_dask(self, meta: Any = None, verify_meta: bool = True) -> Any:
        """A dask DataFrame whose partitions are this dataset's blocks (dask_api.py)."""
        from .dask_api import to_dask
        return to_dask(self, meta=meta, verify_meta=verify_meta)

    def to_arrow_refs(self) -> list[ObjectRef]:
        return [ref for ref, _ in self._stream()]

    def materialize(self) -> Dataset:
        """Run the plan now; the result holds its blocks in the object store."""
        return Dataset([ref for ref, _ in self._stream()])

    def split(self, n: int, *, equal: bool = False, locality_hints: list | None = None) -> list[Dataset]:
        """n datasets of consecutive rows: sizes differ by at most one row, or with equal=True
        are all len // n (as Ray, the remainder rows are dropped). locality_hints (actors
        that will read each split) is accepted as Ray's and not used: blocks stay where they are."""
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"split: n must be a positive int, got {n!r}.")
        if locality_hints is not None and len(locality_hints) != n:
            raise ValueError(f"split: locality_hints must have n={n} entries, got {len(locality_hints)}.")
        done = self.materialize()
        total = sum(rows for _, rows in done._stream())
        base, extra = divmod(total, n)
        sizes = [base] * n if equal else [base + (i < extra) for i in range(n)]
        cuts = list(itertools.accumulate(sizes))
        return done.split_at_indices(cuts)[:n]

    def write_parquet(self, path: str) -> None:
        self._write(path, "parquet")

    def write_csv(self, path: str) -> None:
        self._write(path, "csv")

    def write_json(self, path: str) -> None:
        self._write(path, "json")

    def _write(self, path: str, fmt: str) -> None:
        import os
        os.makedirs(path, exist_ok=True)
        writer = _remote(_write_block)
        refs = []
        for i, (ref, rows) in enumerate(self._stream()):
            if rows:  # as Ray: no file for an empty block (it may not even have the columns)
                refs.append(writer.remote(ref, os.path.join(path, f"part-{i:05d}.{fmt}"), fmt))
        import runtime
        runtime.get(refs)

    def stats(self) -> str:
        s = self._last_stats
        if s is None:
            return "The dataset has not been executed yet."
        return (f"{' -> '.join(('Read',) + self._names)}: {s.blocks} blocks, {s.rows} rows, "
                f"{s.seconds:.3f} s (operators fused into one task per block)")

    # -- execution -------------------------------------------------------------------------
    def _blocks(self) -> list[pa.Table]:
        return list(self._iter_blocks())

    def _iter_blocks(self, stop_after_rows: int | None = None) -> Iterator[pa.Table]:
        import runtime
        schemas = _UnionSchemas() if "Union" in self._names else None  # checked here: the blocks are at hand
        with contextlib.closing(self._stream(stop_after_rows)) as stream:
            for ref, _rows in stream:
                blk = runtime.get(ref)
                if schemas is not None:
                    schemas.check(blk.schema)
                yield blk

    def _stream(self, stop_after_rows: int | None = None) -> Iterator[tuple[ObjectRef, int]]:
        """(block ref, rows) in order, with at most max_blocks_in_flight tasks outstanding.
        Stage sources (an actor pool, ...) are expanded into the blocks they make."""
        import runtime
        ctx = DataContext.get_current()
        window = ctx.max_blocks_in_flight or max(2, 2 * int(runtime.cluster_resources().get("CPU", 1)))
        run = _remote(_execute)
        started, made = time.perf_counter(), 0
        stats = _Stats()
        inflight: list[tuple[ObjectRef, ObjectRef]] = []
        items = _expand(self._sources, self._ops)
        shown = progress.start(" -> ".join(("Read",) + self._names), _count_blocks(self))
        exhausted = False
        try:
            while True:
                while not exhausted and len(inflight) < window:
                    item = next(items, None)
                    if item is None:
                        exhausted = True
                        break
                    inflight.append(_submit(run, *item))
                if not inflight:
                    break
                ref, rows_ref = inflight.pop(0)
                rows = runtime.get(rows_ref)
                stats.blocks += 1
                stats.rows += rows
                made += rows
                shown.update(stats.blocks, stats.rows)
                yield ref, rows
                if stop_after_rows is not None and made >= stop_after_rows:
                    break
        finally:  # also when the consumer stops early: a stage releases what it holds (actors)
            items.close()
            shown.close()
        stats.seconds = time.perf_counter() - started
        self._last_stats = stats


@dataclass
class _Bound:
    """A source with operators of its own (the part of a union that came from one dataset)."""

    source: Any
    ops: tuple


class Stage:
    """A source standing for the blocks a stage boundary makes when the dataset is executed
    (an actor pool, an all-to-all exchange): `_stream` expands it and applies the operators
    after it to each of its blocks, as for any other source."""

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
    """The task making one block; a stage's block with no operators after it needs none."""
    if isinstance(src, _Made):
        if not ops:
            return src.block, src.rows
        src = src.block
    return tuple(run.options(num_returns=2).remote(src, ops))


def _unwrap(src: Any) -> Any:
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
    return any(isinstance(_unwrap(s), Stage) for s in ds._sources)


def _union_error(first: pa.Schema, other: pa.Schema) -> TypeError:
    return TypeError(f"union: the datasets' schemas do not match, so their rows cannot form one dataset. "
                     f"One has\n{first}\nand another has\n{other}\nMake the columns agree first (same names; "
                     "types Arrow can widen, e.g. int32 and int64) with select_columns, drop_columns or "
                     "map_batches, then union.")


def _check_union_schemas(parts: list[Dataset]) -> pa.Schema | None:
    """Check the parts' schemas now where they are known without running anything (stored
    blocks, no operators); returns the common schema then, else None (checked as blocks come)."""
    schemas = [d._known_schema if not d._ops else None for d in parts]
    if any(s is None for s in schemas):
        return None
    pair = B.mismatched_schemas(schemas, same_names=True)
    if pair is not None:
        raise _union_error(*pair)
    return pa.unify_schemas(schemas, promote_options="permissive")


class _UnionSchemas:
    """The lazy union check: each block's schema against the first one's."""

    def __init__(self) -> None:
        self.first: pa.Schema | None = None

    def check(self, schema: pa.Schema) -> None:
        if not len(schema):
            return  # an empty block with no columns fits anything
        if self.first is None:
            self.first = schema
            return
        pair = B.mismatched_schemas([self.first, schema], same_names=True)
        if pair is not None:
            raise _union_error(*pair)


def _execute(source: Any, ops: tuple) -> tuple[pa.Table, int]:
    """In a worker: make (or receive) one block and apply every operator to it."""
    blk = source() if callable(source) else source
    if not isinstance(blk, pa.Table):
        blk = B.from_batch(blk, "a read task")
    for op in ops:
        blk = op(blk)
    blk = B.compact(blk)  # stored next: not with the buffers of blocks it was sliced from
    return blk, blk.num_rows


def _write_block(blk: pa.Table, path: str, fmt: str) -> str:
    if fmt == "parquet":
        import pyarrow.parquet as pq
        pq.write_table(blk, path)
    elif fmt == "csv":
        import pyarrow.csv as pcsv
        pcsv.write_csv(blk, path)
    else:
        blk.to_pandas().to_json(path, orient="records", lines=True)
    return path


def _require_columns(block: pa.Table, cols: list[str], what: str) -> pa.Table:
    missing = [c for c in cols if c not in block.column_names]
    if missing and block.num_rows:
        raise KeyError(f"{what}: no column {missing[0]!r}; the columns are {block.column_names}.")
    return block if not missing else pa.table({})


def _check_row(row: Any, name: str) -> dict:
    if not isinstance(row, dict):
        raise TypeError(f"{name} returned {type(row).__name__} for a row; expected a dict (column -> value).")
    return row


_REMOTES: dict = {}


def _remote(fn: Callable) -> Any:
    if fn not in _REMOTES:
        import runtime
        _REMOTES[fn] = runtime.remote(fn)
    return _REMOTES[fn]


def from_blocks(blocks: list[pa.Table]) -> Dataset:
    import runtime
    ds = Dataset([runtime.put(B.compact(b)) for b in blocks] or [runtime.put(pa.table({}))])
    schemas = [b.schema for b in blocks if b.num_columns]
    if schemas and B.mismatched_schemas(schemas, same_names=True) is None:
        ds._known_schema = pa.unify_schemas(schemas, promote_options="permissive")  # union checks it at once
    return ds

