"""`Dataset`: a lazy plan over blocks (Arrow tables in the object store), executed by streaming.

A dataset is a list of sources (one per block: a read task, or the ObjectRef of a block
already stored) and a chain of per-block operators. Nothing runs until the data is consumed.
Then every source becomes one runtime task that reads (or receives) its block and applies all
the operators in one go (they are fused: one task per block, no intermediate blocks in the
store), and at most `max_blocks_in_flight` blocks are being made or waiting to be consumed at
any time, so a dataset larger than the object store streams through it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import pyarrow as pa

from .._core.object_ref import ObjectRef
from . import block as B


@dataclass
class DataContext:
    """Execution settings (Ray's `DataContext.get_current()`)."""

    max_blocks_in_flight: int = 0  # 0: twice the cluster's CPUs
    target_max_block_rows: int = 200_000  # from_items / range split into blocks of about this size

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
    def __init__(self, sources: list, ops: tuple = (), names: tuple = ()) -> None:
        self._sources = sources  # each: a zero-argument callable returning a block, or a block's ObjectRef
        self._ops = ops  # per-block functions block -> block, applied in order
        self._names = names
        self._last_stats: _Stats | None = None

    def __repr__(self) -> str:
        chain = " -> ".join(("Read",) + self._names)
        return f"Dataset(num_blocks={len(self._sources)}, plan={chain})"

    # -- transforms (lazy) -----------------------------------------------------------------
    def _with(self, op: Callable[[pa.Table], pa.Table], name: str) -> Dataset:
        return Dataset(self._sources, self._ops + (op,), self._names + (name,))

    def map_batches(self, fn: Any, *, batch_size: int | None | str = "default", batch_format: str = "default",
                    fn_args: tuple = (), fn_kwargs: dict | None = None, fn_constructor_args: tuple = (),
                    fn_constructor_kwargs: dict | None = None, compute: Any = None, zero_copy_batch: bool = False,
                    **_remote_args: Any) -> Dataset:
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

        def op(block: pa.Table, _state: dict = {}) -> pa.Table:  # noqa: B006 - per-process instance cache
            call = fn
            if is_class:  # a callable class: one instance per worker process, built on first use
                key = id(fn)
                if key not in _state:
                    _state[key] = fn(*fn_constructor_args, **ctor_kwargs)
                call = _state[key]
            outs = []
            for i, batch in enumerate(B.batches(block, size)):
                out = call(B.to_batch(batch, batch_format), *fn_args, **fn_kwargs)
                outs.append(B.from_batch(out, f"{name} on batch {i} ({batch.num_rows} rows)"))
            return B.concat(outs)

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
        return Dataset([_Bound(s, d._ops) for d in parts for s in d._sources], (), ("Union",))

    def limit(self, n: int) -> Dataset:
        """The first n rows; the stream stops once they are made."""
        rows = list(self._iter_blocks(stop_after_rows=n))
        taken, out = 0, []
        for b in rows:
            out.append(b.slice(0, n - taken))
            taken += out[-1].num_rows
        return from_blocks(out)

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

    def _aggregate(self, on: str, how: str) -> Any:
        import pyarrow.compute as pc
        parts = []
        for blk in self._iter_blocks():
            if blk.num_rows == 0:
                continue
            if on not in blk.column_names:
                raise KeyError(f"{how}: no column {on!r}; the columns are {blk.column_names}.")
            col = blk.column(on)
            if how == "mean":
                parts.append((pc.sum(col).as_py() or 0, pc.count(col).as_py()))
            else:
                parts.append(getattr(pc, {"sum": "sum", "min": "min", "max": "max"}[how])(col).as_py())
        if how == "mean":
            total, n = sum(p[0] for p in parts), sum(p[1] for p in parts)
            return total / n if n else None
        values = [p for p in parts if p is not None]
        if not values:
            return None
        return {"sum": sum, "min": min, "max": max}[how](values)

    def sum(self, on: str) -> Any:
        return self._aggregate(on, "sum")

    def min(self, on: str) -> Any:
        return self._aggregate(on, "min")

    def max(self, on: str) -> Any:
        return self._aggregate(on, "max")

    def mean(self, on: str) -> Any:
        return self._aggregate(on, "mean")

    def to_pandas(self) -> Any:
        return B.concat(list(self._iter_blocks())).to_pandas()

    def to_arrow_refs(self) -> list[ObjectRef]:
        return [ref for ref, _ in self._stream()]

    def materialize(self) -> Dataset:
        """Run the plan now; the result holds its blocks in the object store."""
        return Dataset([ref for ref, _ in self._stream()])

    def split(self, n: int) -> list[Dataset]:
        refs = self.to_arrow_refs()
        return [Dataset(refs[i::n]) for i in range(n)]

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
        for i, (ref, _rows) in enumerate(self._stream()):
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
        for ref, _rows in self._stream(stop_after_rows):
            yield runtime.get(ref)

    def _stream(self, stop_after_rows: int | None = None) -> Iterator[tuple[ObjectRef, int]]:
        """(block ref, rows) in order, with at most max_blocks_in_flight tasks outstanding."""
        import runtime
        ctx = DataContext.get_current()
        window = ctx.max_blocks_in_flight or max(2, 2 * int(runtime.cluster_resources().get("CPU", 1)))
        run = _remote(_execute)
        started, made = time.perf_counter(), 0
        stats = _Stats()
        inflight: list[tuple[ObjectRef, ObjectRef]] = []
        sources = iter(self._sources)
        exhausted = False
        while True:
            while not exhausted and len(inflight) < window:
                src = next(sources, None)
                if src is None:
                    exhausted = True
                    break
                ops = self._ops
                if isinstance(src, _Bound):
                    src, ops = src.source, src.ops + ops
                inflight.append(tuple(run.options(num_returns=2).remote(src, ops)))
            if not inflight:
                break
            ref, rows_ref = inflight.pop(0)
            rows = runtime.get(rows_ref)
            stats.blocks += 1
            stats.rows += rows
            made += rows
            yield ref, rows
            if stop_after_rows is not None and made >= stop_after_rows:
                break
        stats.seconds = time.perf_counter() - started
        self._last_stats = stats


@dataclass
class _Bound:
    """A source with operators of its own (the part of a union that came from one dataset)."""

    source: Any
    ops: tuple


def _execute(source: Any, ops: tuple) -> tuple[pa.Table, int]:
    """In a worker: make (or receive) one block and apply every operator to it."""
    blk = source() if callable(source) else source
    if not isinstance(blk, pa.Table):
        blk = B.from_batch(blk, "a read task")
    for op in ops:
        blk = op(blk)
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
    return Dataset([runtime.put(b) for b in blocks] or [runtime.put(pa.table({}))])

