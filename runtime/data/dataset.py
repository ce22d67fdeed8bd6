"""`Dataset`: a lazy plan over blocks (Arrow tables in the object store), executed by streaming.

A dataset is a list of sources (one per block: a read task, or the ObjectRef of a block
already stored) and a chain of per-block operators. Nothing runs until the data is consumed.
Then every source becomes one runtime task that reads (or receives) its block and applies all
the operators in one go (they are fused: one task per block, no intermediate blocks in the
store), and at most `max_blocks_in_flight` blocks are being made or waiting to be consumed at
any time, so a dataset larger than the object store streams through it.

A source may also be a `Stage`: a boundary the fusion stops at (a map_batches class on an
actor pool, an all-to-all exchange), which `_stream` expands into the blocks it makes. The
plan's pieces (sources, stages, the block task) are in plan.py; the operators that need a
stage of their own are in actor_pool.py, all_to_all.py and grouped.py, which this module
imports: none of them imports it back, they build new datasets through `Dataset._staged`.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from .._core.object_ref import ObjectRef
from . import aggregate as A
from . import all_to_all, dask_api, progress
from . import block as B
from .actor_pool import ActorStage, resolve_compute
from .context import DataContext
from .grouped import GroupedData
# The plan's pieces live in plan.py (below the operator modules, which build stages from them);
# they are imported here by their old names, so `from runtime.data.dataset import Stage` still works.
from .plan import (Stage, _Bound, _count_blocks, _execute, _expand, _has_stages, _Made, _remote,  # noqa: F401
                   _submit, _unwrap)
from .remote_args import takes_remote_args

__all__ = ["DataContext", "Dataset", "from_blocks"]


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
    def _staged(self, stage: Stage, name: str) -> Dataset:
        """A dataset whose only source is `stage` (which reads this one): how the operator
        modules (actor_pool.py, all_to_all.py, grouped.py) make their result without importing
        this class."""
        return Dataset([stage], (), self._names + (name,))

    def _with(self, op: Callable[[pa.Table], pa.Table], name: str, remote_args: dict | None = None) -> Dataset:
        if remote_args:
            op.remote_args = remote_args  # type: ignore[attr-defined]  # read by _submit (remote_args.merged)
        return Dataset(self._sources, self._ops + (op,), self._names + (name,))

    @takes_remote_args()
    def map_batches(self, fn: Any, *, batch_size: int | None | str = None, compute: Any = None,
                    batch_format: str = "default", zero_copy_batch: bool = False, fn_args: tuple = (),
                    fn_kwargs: dict | None = None, fn_constructor_args: tuple = (),
                    fn_constructor_kwargs: dict | None = None, concurrency: int | tuple | None = None,
                    udf_modifying_row_count: bool = True, _remote_args: dict) -> Dataset:
        """`fn` on batches of each block. A function (or a class without compute/concurrency,
        one instance per worker process) is fused into the per-block task; a class with
        `compute=ActorPoolStrategy(...)` or `concurrency=` runs on a pool of actors, a stage of
        its own (actor_pool.py). Task options (num_cpus=, num_gpus=, resources=, ...) are
        Ray's (remote_args.py); udf_modifying_row_count is accepted and unused."""
        if batch_format not in B.BATCH_FORMATS:
            raise ValueError(f"map_batches: batch_format must be one of {', '.join(B.BATCH_FORMATS)}, "
                             f"got {batch_format!r}.")
        # Ray 2.60's default, None, hands fn each block whole; "auto" sizes batches at about
        # AUTO_BATCH_BYTES, as Ray does; "default" is this project's older default, 4096 rows.
        size = 4096 if batch_size == "default" else batch_size
        if size != "auto" and size is not None and (not isinstance(size, int) or isinstance(size, bool) or size <= 0):
            raise ValueError(f"map_batches: batch_size must be a positive int, None (whole blocks) or \"auto\", "
                             f"got {batch_size!r}.")
        name = f"MapBatches({getattr(fn, '__name__', type(fn).__name__)})"
        is_class = isinstance(fn, type)
        fn_kwargs = fn_kwargs or {}
        ctor_kwargs = fn_constructor_kwargs or {}
        pool = resolve_compute(fn, compute, concurrency, name)
        if pool is not None:  # a stage boundary: the blocks so far go through the actors
            loop = (size, batch_format, tuple(fn_args), fn_kwargs, name)
            return self._staged(ActorStage(self, fn, tuple(fn_constructor_args), ctor_kwargs, loop, pool,
                                           _remote_args), name)

        def op(block: pa.Table, _state: dict = {}) -> pa.Table:  # noqa: B006 - per-process instance cache
            call = fn
            if is_class:  # a callable class: one instance per worker process, built on first use
                key = id(fn)
                if key not in _state:
                    _state[key] = fn(*fn_constructor_args, **ctor_kwargs)
                call = _state[key]
            return B.map_batches(call, block, size, batch_format, fn_args, fn_kwargs, name)

        return self._with(op, name, _remote_args)

    @takes_remote_args()
    def map(self, fn: Callable[[dict], dict], *, compute: Any = None, fn_args: tuple = (),
            fn_kwargs: dict | None = None, fn_constructor_args: tuple = (), fn_constructor_kwargs: dict | None = None,
            _remote_args: dict) -> Dataset:
        """fn on each row. A callable class is built once per worker process (with
        fn_constructor_args/kwargs); compute= for an actor pool is map_batches' (use that)."""
        name = f"Map({getattr(fn, '__name__', 'fn')})"
        row_fn = _row_function(fn, compute, fn_args, fn_kwargs, fn_constructor_args, fn_constructor_kwargs, name)

        def op(block: pa.Table) -> pa.Table:
            call = row_fn()
            return B.from_rows([_check_row(call(r), name) for r in B.rows_of(block)], name)

        return self._with(op, name, _remote_args)

    @takes_remote_args()
    def flat_map(self, fn: Callable[[dict], list], *, compute: Any = None, fn_args: tuple = (),
                 fn_kwargs: dict | None = None, fn_constructor_args: tuple = (),
                 fn_constructor_kwargs: dict | None = None, _remote_args: dict) -> Dataset:
        name = f"FlatMap({getattr(fn, '__name__', 'fn')})"
        row_fn = _row_function(fn, compute, fn_args, fn_kwargs, fn_constructor_args, fn_constructor_kwargs, name)

        def op(block: pa.Table) -> pa.Table:
            rows = []
            call = row_fn()
            for r in B.rows_of(block):
                out = call(r)
                if not isinstance(out, (list, tuple)):
                    raise TypeError(f"{name} returned {type(out).__name__} for a row; expected a list of rows.")
                rows.extend(out)
            return B.from_rows(rows, name)

        return self._with(op, name, _remote_args)

    @takes_remote_args()
    def filter(self, fn: Callable[[dict], bool] | None = None, expr: str | None = None, *, compute: Any = None,
               fn_args: tuple = (), fn_kwargs: dict | None = None, fn_constructor_args: tuple = (),
               fn_constructor_kwargs: dict | None = None, _remote_args: dict) -> Dataset:
        """The rows for which fn(row) is true, or (Ray's expr=) for which the expression over
        the columns is true, like "id > 5 and kind == 'a'" (evaluated by pandas.eval)."""
        if (fn is None) == (expr is None):
            raise ValueError("filter: give either fn (a function of a row) or expr (a string like \"id > 5\"), "
                             "not both or neither.")
        if expr is not None:
            if not isinstance(expr, str):
                raise TypeError(f"filter: expr must be a string like \"id > 5\", got {type(expr).__name__}.")
            name = f"Filter({expr})"

            def op(block: pa.Table) -> pa.Table:
                if not block.num_rows:
                    return block
                mask = B.to_pandas(block).eval(expr)
                return block.filter(pa.array(mask.to_numpy(dtype=bool), type=pa.bool_()))

            return self._with(op, name, _remote_args)
        name = f"Filter({getattr(fn, '__name__', 'fn')})"
        row_fn = _row_function(fn, compute, fn_args, fn_kwargs, fn_constructor_args, fn_constructor_kwargs, name)

        def op(block: pa.Table) -> pa.Table:
            call = row_fn()
            keep = [bool(call(r)) for r in B.rows_of(block)]
            return block.filter(pa.array(keep, type=pa.bool_())) if block.num_rows else block

        return self._with(op, name, _remote_args)

    @takes_remote_args()
    def add_column(self, col: str, fn: Callable[[Any], Any], *, batch_format: str = "pandas", compute: Any = None,
                   _remote_args: dict) -> Dataset:
        def add(df: Any) -> Any:
            df[col] = fn(df)
            return df
        return self.map_batches(add, batch_format=batch_format, batch_size=None, **_task_options(_remote_args))

    @takes_remote_args()
    def drop_columns(self, cols: list[str], *, compute: Any = None, _remote_args: dict) -> Dataset:
        def op(block: pa.Table) -> pa.Table:
            return _require_columns(block, cols, "drop_columns").drop_columns(cols)
        return self._with(op, f"DropColumns({cols})", _remote_args)

    @takes_remote_args()
    def select_columns(self, cols: list[str], *, compute: Any = None, _remote_args: dict) -> Dataset:
        def op(block: pa.Table) -> pa.Table:
            return _require_columns(block, cols, "select_columns").select(cols)
        return self._with(op, f"SelectColumns({cols})", _remote_args)

    def union(self, *others: Dataset) -> Dataset:
        """The rows of this dataset, then of each other one (schemas must agree)."""
        parts = [self, *others]
        out = Dataset([_Bound(s, d._ops) for d in parts for s in d._sources], (), ("Union",))
        out._known_schema = _check_union_schemas(parts)
        return out

    def limit(self, limit: int) -> Dataset:
        """The first `limit` rows; the stream stops once they are made."""
        n = limit
        rows = list(self._iter_blocks(stop_after_rows=n))
        taken, out = 0, []
        for b in rows:
            out.append(b.slice(0, n - taken))
            taken += out[-1].num_rows
        return from_blocks(out)

    # -- all-to-all (see all_to_all.py) --
    def repartition(self, num_blocks: int | None = None, target_num_rows_per_block: int | None = None, *,
                    strict: bool = False, shuffle: bool = False, keys: list[str] | None = None,
                    sort: bool = False) -> Dataset:
        """num_blocks blocks of nearly equal row counts, rows in order (shuffle=True shuffles the
        rows into them instead), or blocks of target_num_rows_per_block rows (the last one may
        have fewer; strict is accepted: ours are always exact). keys= (hash partitioning) is
        not built: a clear error says so."""
        if keys is not None:
            raise ValueError("repartition(keys=...) is not supported; groupby(keys) or sort(keys) bring rows with "
                             "equal keys together.")
        if (num_blocks is None) == (target_num_rows_per_block is None):
            raise ValueError("repartition: give either num_blocks or target_num_rows_per_block.")
        ds = self
        if target_num_rows_per_block is not None:
            if not isinstance(target_num_rows_per_block, int) or target_num_rows_per_block < 1:
                raise ValueError(f"repartition: target_num_rows_per_block must be a positive int, got "
                                 f"{target_num_rows_per_block!r}.")
            ds = self.materialize()
            num_blocks = max(1, -(-ds.count() // target_num_rows_per_block))
        return all_to_all.repartition(ds, num_blocks, shuffle)

    def random_shuffle(self, *, seed: int | None = None, num_blocks: int | None = None,
                       **_remote_args: Any) -> Dataset:
        """The rows in a random order (the same order every time for a given seed)."""
        return all_to_all.random_shuffle(self, seed, num_blocks)

    def sort(self, key: str | list[str], descending: bool | list[bool] = False,
             boundaries: list | None = None) -> Dataset:
        """Rows sorted by the key column(s), across blocks; nulls last. boundaries (Ray's
        range-partition bounds) is accepted and unused: ours are sampled from the data."""
        return all_to_all.sort(self, key, descending)

    def groupby(self, key: str | list[str] | None, num_partitions: int | None = None) -> Any:
        """A GroupedData (grouped.py); key None makes one group of every row. num_partitions
        is accepted and unused: the number of key ranges follows the data."""
        return GroupedData(self, key)

    def aggregate(self, *aggs: Any) -> dict:
        """The aggregations (runtime.data.aggregate) over all rows, as {name: value}."""
        return self.groupby(None).aggregate(*aggs).take_all()[0]

    def std(self, on: str | list[str] | None = None, ddof: int = 1, ignore_nulls: bool = True) -> Any:
        return self._aggregate("std", on, ignore_nulls, ddof=ddof)

    def zip(self, *other: Dataset) -> Dataset:
        """Row i: the columns of row i of this and each other dataset (taken names get _1, _2...)."""
        if not other:
            raise TypeError("zip needs at least one other dataset: ds.zip(other).")
        out = self
        for o in other:
            if not isinstance(o, Dataset):
                raise TypeError(f"zip: other must be a Dataset, got {type(o).__name__}.")
            out = all_to_all.zip_datasets(out, o)
        return out

    def split_at_indices(self, indices: list[int]) -> list[Dataset]:
        """Rows [0, i0), [i0, i1), ..., [ik, end) as len(indices)+1 datasets (as numpy.split)."""
        return all_to_all.split_at_indices(self, indices)

    # -- consumption -----------------------------------------------------------------------
    def iter_batches(self, *, prefetch_batches: int = 1, batch_size: int | None = 256,
                     batch_format: str | None = "default", drop_last: bool = False,
                     local_shuffle_buffer_size: int | None = None, local_shuffle_seed: int | None = None,
                     _collate_fn: Callable[[Any], Any] | None = None) -> Iterator[Any]:
        """Batches of batch_size rows (None: one per block); drop_last drops a last short one.
        local_shuffle_buffer_size: rows are shuffled within a buffer of at least that many
        (seeded by local_shuffle_seed), as Ray. prefetch_batches is accepted: blocks are
        already computed ahead (DataContext.max_blocks_in_flight)."""
        fmt = batch_format or "default"
        emit = (lambda b: _collate_fn(B.to_batch(b, fmt))) if _collate_fn is not None else \
            (lambda b: B.to_batch(b, fmt))
        blocks: Iterator[pa.Table] = self._iter_blocks()
        if local_shuffle_buffer_size is not None:
            blocks = _shuffled(blocks, local_shuffle_buffer_size, local_shuffle_seed)
        pending: list[pa.Table] = []
        held = 0
        for blk in blocks:
            if batch_size is None:
                yield emit(blk)
                continue
            pending.append(blk)
            held += blk.num_rows
            while held >= batch_size:
                merged = B.concat(pending)
                yield emit(merged.slice(0, batch_size))
                rest = merged.slice(batch_size)
                pending, held = ([rest] if rest.num_rows else []), rest.num_rows
        if held and not drop_last:
            yield emit(B.concat(pending))

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

    def take_all(self, limit: int | None = None) -> list[dict]:
        """Every row; with limit, a ValueError if there are more (as Ray)."""
        rows = list(self.iter_rows()) if limit is None else self.take(limit + 1)
        if limit is not None and len(rows) > limit:
            raise ValueError(f"The dataset has more than the given limit of {limit} rows.")
        return rows

    def take_batch(self, batch_size: int = 20, *, batch_format: str = "default") -> Any:
        rows = self.limit(batch_size)
        return B.to_batch(B.concat(rows._blocks()), batch_format)

    def show(self, limit: int = 20) -> None:
        for row in self.take(limit):
            print(row)

    def count(self) -> int:
        return sum(b.num_rows for b in self._iter_blocks())

    def schema(self, fetch_if_missing: bool = True) -> pa.Schema | None:
        """The blocks' schema (fetch_if_missing is accepted: ours runs the first block to know it)."""
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
        cls = {"sum": A.Sum, "min": A.Min, "max": A.Max, "mean": A.Mean, "std": A.Std}[how]
        columns = self.columns() if on is None else B.key_list(on, how)
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

    def to_pandas(self, limit: int | None = None) -> Any:
        """One DataFrame of every row; with limit, a ValueError if there are more (as Ray)."""
        if limit is not None and len(self.take(limit + 1)) > limit:
            raise ValueError(f"The dataset has more than the given limit of {limit} rows; to_pandas(limit=None) "
                             "takes them all.")
        return B.to_pandas(B.concat(list(self._iter_blocks())))

    def to_dask(self, meta: Any = None, verify_meta: bool = True) -> Any:
        """A dask DataFrame whose partitions are this dataset's blocks (dask_api.py)."""
        return dask_api.to_dask(self, meta=meta, verify_meta=verify_meta)

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

    def write_parquet(self, path: str, *, partition_cols: list[str] | None = None, filesystem: Any = None,
                      catalog: Any = None, try_create_dir: bool = True, arrow_open_stream_args: dict | None = None,
                      filename_provider: Any = None, arrow_parquet_args_fn: Callable[[], dict] | None = None,
                      min_rows_per_file: int | None = None, max_rows_per_file: int | None = None,
                      min_bytes_per_file: int | None = None, ray_remote_args: dict | None = None,
                      concurrency: int | None = None, num_rows_per_file: int | None = None, mode: str = "append",
                      **arrow_parquet_args: Any) -> None:
        """One file per block (as Ray, none for an empty block), or hive directories by
        partition_cols. filesystem (pyarrow.fs), arrow_open_stream_args, filename_provider
        (Ray's FilenameProvider), mode (create/append/overwrite/ignore), ray_remote_args (the
        write tasks' options) and the pyarrow arguments are Ray's; the per-file row and byte
        targets and concurrency are accepted and unused (a file is a block)."""
        if catalog is not None:
            raise ValueError("write_parquet(catalog=...) is not supported: write to a path (and register the "
                             "files in the catalog with its own client).")
        self._write(path, "parquet", _WriteSpec(filesystem, try_create_dir, arrow_open_stream_args or {},
                                                filename_provider, arrow_parquet_args_fn, arrow_parquet_args,
                                                partition_cols), mode, ray_remote_args)

    def write_csv(self, path: str, *, filesystem: Any = None, try_create_dir: bool = True,
                  arrow_open_stream_args: dict | None = None, filename_provider: Any = None,
                  arrow_csv_args_fn: Callable[[], dict] | None = None, min_rows_per_file: int | None = None,
                  ray_remote_args: dict | None = None, concurrency: int | None = None,
                  num_rows_per_file: int | None = None, mode: str = "append", **arrow_csv_args: Any) -> None:
        """As write_parquet; arrow_csv_args go to pyarrow.csv.write_csv."""
        self._write(path, "csv", _WriteSpec(filesystem, try_create_dir, arrow_open_stream_args or {},
                                            filename_provider, arrow_csv_args_fn, arrow_csv_args), mode,
                    ray_remote_args)

    def write_json(self, path: str, *, filesystem: Any = None, try_create_dir: bool = True,
                   arrow_open_stream_args: dict | None = None, filename_provider: Any = None,
                   pandas_json_args_fn: Callable[[], dict] | None = None, min_rows_per_file: int | None = None,
                   ray_remote_args: dict | None = None, concurrency: int | None = None,
                   num_rows_per_file: int | None = None, mode: str = "append", **pandas_json_args: Any) -> None:
        """As write_parquet; JSON lines by pandas (pandas_json_args go to DataFrame.to_json)."""
        self._write(path, "json", _WriteSpec(filesystem, try_create_dir, arrow_open_stream_args or {},
                                             filename_provider, pandas_json_args_fn, pandas_json_args), mode,
                    ray_remote_args)

    def _write(self, path: str, fmt: str, spec: _WriteSpec | None = None, mode: str = "append",
               remote_args: dict | None = None) -> None:
        import os
        import uuid

        import runtime
        spec = spec or _WriteSpec()
        mode = getattr(mode, "value", mode)  # Ray's SaveMode enum, or its string
        if mode not in ("create", "append", "overwrite", "ignore"):
            raise ValueError(f"write_{fmt}: mode must be 'create', 'append', 'overwrite' or 'ignore', got {mode!r}.")
        fs = spec.filesystem
        exists = (fs.get_file_info(path).type.name != "NotFound") if fs is not None else os.path.exists(path)
        if exists and mode == "ignore":
            return
        if exists and mode == "create":
            raise FileExistsError(f"write_{fmt}: {path!r} exists and mode='create'; use mode='append' or "
                                  "'overwrite'.")
        if exists and mode == "overwrite":
            if fs is not None:
                fs.delete_dir_contents(path)
            else:
                import shutil
                shutil.rmtree(path)
        if spec.try_create_dir:
            fs.create_dir(path, recursive=True) if fs is not None else os.makedirs(path, exist_ok=True)
        writer = _remote(_write_block).options(**(remote_args or {}))
        write_id, refs = uuid.uuid4().hex[:12], []
        for i, (ref, rows) in enumerate(self._stream()):
            if rows:  # as Ray: no file for an empty block (it may not even have the columns)
                name = (spec.filename_provider.get_filename_for_block(None, write_id, i, 0)
                        if spec.filename_provider is not None else f"part-{i:05d}.{fmt}")
                refs.append(writer.remote(ref, f"{path.rstrip('/')}/{name}", fmt, spec))
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


def _shuffled(blocks: Iterator[pa.Table], buffer_rows: int, seed: int | None) -> Iterator[pa.Table]:
    """Ray's local shuffle: rows are shuffled within a buffer of at least buffer_rows."""
    import numpy as np
    if not isinstance(buffer_rows, int) or buffer_rows < 1:
        raise ValueError(f"local_shuffle_buffer_size must be a positive int, got {buffer_rows!r}.")
    rng = np.random.default_rng(seed)
    pending: list[pa.Table] = []
    held = 0
    for blk in blocks:
        pending.append(blk)
        held += blk.num_rows
        if held >= buffer_rows:
            merged = B.concat(pending)
            yield merged.take(rng.permutation(merged.num_rows))
            pending, held = [], 0
    if held:
        merged = B.concat(pending)
        yield merged.take(rng.permutation(merged.num_rows))


def _task_options(remote_args: dict) -> dict:
    """remote_args as keywords for another operator (ray_remote_args_fn under Ray's name)."""
    out = dict(remote_args)
    if "_args_fn" in out:
        out["ray_remote_args_fn"] = out.pop("_args_fn")
    return out


def _row_function(fn: Any, compute: Any, fn_args: tuple, fn_kwargs: dict | None, ctor_args: tuple,
                  ctor_kwargs: dict | None, name: str) -> Callable[[], Callable[[dict], Any]]:
    """For map/flat_map/filter: a getter of the per-row callable (fn with fn_args/fn_kwargs; a
    callable class built once per worker process)."""
    if compute is not None and compute != "tasks":
        raise ValueError(f"{name}: compute={compute!r} (an actor pool) is for map_batches with a callable class; "
                         "map, flat_map and filter run as tasks.")
    fn_kwargs = fn_kwargs or {}
    built: list = []

    def get() -> Callable[[dict], Any]:
        if not isinstance(fn, type):
            return lambda row: fn(row, *fn_args, **fn_kwargs)
        if not built:
            built.append(fn(*ctor_args, **(ctor_kwargs or {})))
        return lambda row: built[0](row, *fn_args, **fn_kwargs)

    return get


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


@dataclass
class _WriteSpec:
    """How write_* writes each block (Ray's arguments, carried to the write tasks)."""

    filesystem: Any = None
    try_create_dir: bool = True
    open_args: dict = field(default_factory=dict)
    filename_provider: Any = None
    args_fn: Callable[[], dict] | None = None
    args: dict = field(default_factory=dict)
    partition_cols: list[str] | None = None


def _write_block(blk: pa.Table, path: str, fmt: str, spec: _WriteSpec | None = None) -> str:
    spec = spec or _WriteSpec()
    args = {**spec.args, **(spec.args_fn() if spec.args_fn else {})}
    if fmt == "parquet" and spec.partition_cols:
        import os

        import pyarrow.parquet as pq
        root, name = os.path.split(path)
        pq.write_to_dataset(blk, root, partition_cols=spec.partition_cols, filesystem=spec.filesystem,
                            basename_template=name.replace(".parquet", "") + "-{i}.parquet", **args)
        return path
    sink = spec.filesystem.open_output_stream(path, **spec.open_args) if spec.filesystem is not None else path
    try:
        if fmt == "parquet":
            import pyarrow.parquet as pq
            pq.write_table(blk, sink, **args)
        elif fmt == "csv":
            import pyarrow.csv as pcsv
            pcsv.write_csv(blk, sink, **args)
        else:
            text = blk.to_pandas().to_json(**{"orient": "records", "lines": True, **args})
            if isinstance(sink, str):
                with open(sink, "w") as f:
                    f.write(text)
            else:
                sink.write(text.encode())
    finally:
        if not isinstance(sink, str):
            sink.close()
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


def from_blocks(blocks: list[pa.Table]) -> Dataset:
    import runtime
    ds = Dataset([runtime.put(B.compact(b)) for b in blocks] or [runtime.put(pa.table({}))])
    schemas = [b.schema for b in blocks if b.num_columns]
    if schemas and B.mismatched_schemas(schemas, same_names=True) is None:
        ds._known_schema = pa.unify_schemas(schemas, promote_options="permissive")  # union checks it at once
    return ds

