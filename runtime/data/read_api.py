"""Creating datasets: from values in the driver (put into the object store as blocks) or from
files (one read task per file, run in the cluster when the data is consumed)."""

from __future__ import annotations

import builtins
import glob
import os
from typing import Any

import numpy as np
import pyarrow as pa

from . import block as B
from . import dask_api
from .context import DataContext
from .dataset import Dataset, from_blocks
from .remote_args import READ_KEYWORDS, takes_remote_args


def range(n: int, *, parallelism: int = -1, concurrency: int | None = None,  # noqa: A001
          override_num_blocks: int | None = None) -> Dataset:
    """Rows {"id": 0} ... {"id": n-1}, made in the cluster (nothing is put from the driver).
    parallelism is Ray's older name of override_num_blocks (-1: chosen from n); concurrency
    is accepted and unused (DataContext.max_blocks_in_flight bounds the tasks at once)."""
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"range(n) needs a non-negative int, got {n!r}.")
    blocks = override_num_blocks or _parallelism(parallelism) or max(1, min(200, -(-n // DataContext.get_current().target_max_block_rows)))
    bounds = [n * i // blocks for i in builtins.range(blocks + 1)]
    return Dataset([_RangeBlock(lo, hi) for lo, hi in zip(bounds, bounds[1:])])


class _RangeBlock:
    def __init__(self, lo: int, hi: int) -> None:
        self.lo, self.hi = lo, hi

    def __call__(self) -> pa.Table:
        return pa.table({"id": np.arange(self.lo, self.hi, dtype=np.int64)})


def _parallelism(parallelism: int | None) -> int | None:
    """Ray's parallelism= (the number of blocks; -1 or None: chosen)."""
    return None if parallelism is None or parallelism == -1 else parallelism


def from_items(items: list, *, parallelism: int = -1, override_num_blocks: int | None = None) -> Dataset:
    """A list of dicts (rows) or of values (stored under "item")."""
    items = list(items)
    size = DataContext.get_current().target_max_block_rows
    blocks = override_num_blocks or _parallelism(parallelism) or max(1, -(-len(items) // size))
    step = max(1, -(-len(items) // blocks))
    return from_blocks([B.from_rows(items[i:i + step], "from_items") for i in builtins.range(0, len(items), step)])


def from_pandas(dfs: Any, override_num_blocks: int | None = None) -> Dataset:
    """One block per DataFrame, or override_num_blocks blocks of their rows."""
    import pandas as pd
    dfs = dfs if isinstance(dfs, list) else [dfs]
    for d in dfs:
        if not isinstance(d, pd.DataFrame):
            raise TypeError(f"from_pandas takes pandas DataFrames, got {type(d).__name__}.")
    blocks = [B.from_batch(d, "from_pandas") for d in dfs]  # object columns Arrow cannot hold: pickled
    return from_blocks(_reblocked(blocks, override_num_blocks))


def from_arrow(tables: Any, *, override_num_blocks: int | None = None) -> Dataset:
    """One block per Table, or override_num_blocks blocks of their rows."""
    tables = tables if isinstance(tables, list) else [tables]
    for t in tables:
        if not isinstance(t, pa.Table):
            raise TypeError(f"from_arrow takes pyarrow Tables, got {type(t).__name__}.")
    return from_blocks(_reblocked(tables, override_num_blocks))


def _reblocked(blocks: list[pa.Table], n: int | None) -> list[pa.Table]:
    """`n` blocks of nearly equal row counts (zero-copy slices), or the blocks as they are."""
    if n is None:
        return blocks
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"override_num_blocks must be a positive int, got {n!r}.")
    whole = B.concat(blocks)
    bounds = [whole.num_rows * i // n for i in builtins.range(n + 1)]
    return [whole.slice(lo, hi - lo) for lo, hi in zip(bounds, bounds[1:])]


def from_dask(df: Any) -> Dataset:
    """A dataset of a dask DataFrame (or Series), one block per partition (Ray's
    `ray.data.from_dask`). The partitions are computed on the runtime and stay there
    (dask_api.py); they are the dataset's sources, converted to Arrow by the block tasks."""
    return Dataset(dask_api.partition_refs(df))


def from_numpy(ndarrays: Any) -> Dataset:
    """A column "data" of the array's rows; a list of arrays gives one block each."""
    arrays = ndarrays if isinstance(ndarrays, list) else [ndarrays]
    return from_blocks([B.from_batch({"data": a}, "from_numpy") for a in arrays])


def _expand(paths: Any, suffixes: tuple[str, ...], what: str, filesystem: Any = None,
            ignore_missing: bool = False) -> list[str]:
    """Files, directories (their files with `suffixes`, recursively) and globs; every pattern must
    match unless ignore_missing. With a pyarrow `filesystem`, paths are on it (no globs)."""
    out: list[str] = []
    for p in [paths] if isinstance(paths, (str, os.PathLike)) else list(paths):
        p = os.fspath(p)
        if filesystem is not None:
            out.extend(_expand_on(filesystem, p, suffixes, what, ignore_missing))
        elif any(ch in p for ch in "*?["):
            found = sorted(glob.glob(p, recursive=True))
            if not found and not ignore_missing:
                raise FileNotFoundError(f"{what}: the pattern {p!r} matches no file.")
            out.extend(found)
        elif os.path.isdir(p):
            found = sorted(os.path.join(d, f) for d, _, fs in os.walk(p) for f in fs
                           if f.endswith(suffixes) and not f.startswith((".", "_")))
            if not found and not ignore_missing:
                raise FileNotFoundError(f"{what}: the directory {p!r} has no {'/'.join(suffixes)} files.")
            out.extend(found)
        elif os.path.exists(p):
            out.append(p)
        elif not ignore_missing:
            raise FileNotFoundError(f"{what}: no such file or directory: {p!r} (ignore_missing_paths=True skips it).")
    return out


def _expand_on(fs: Any, path: str, suffixes: tuple[str, ...], what: str, ignore_missing: bool) -> list[str]:
    import pyarrow.fs as pafs
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.Directory:
        return sorted(i.path for i in fs.get_file_info(pafs.FileSelector(path, recursive=True))
                      if i.type == pafs.FileType.File and i.path.endswith(suffixes)
                      and not os.path.basename(i.path).startswith((".", "_")))
    if info.type == pafs.FileType.File:
        return [path]
    if ignore_missing:
        return []
    raise FileNotFoundError(f"{what}: no such file or directory on {type(fs).__name__}: {path!r}.")


class _ReadFile:
    """One read task's work: a file, read by pyarrow with the reader's arguments."""

    def __init__(self, path: str, fmt: str, columns: list | None, filesystem: Any = None,
                 open_args: dict | None = None, include_path: bool = False, hive: bool = False,
                 reader_args: dict | None = None) -> None:
        self.path, self.fmt, self.columns = path, fmt, columns
        self.filesystem, self.open_args, self.reader_args = filesystem, open_args or {}, reader_args or {}
        self.include_path, self.hive = include_path, hive

    def __call__(self) -> pa.Table:
        try:
            table = self._read()
        except (pa.ArrowInvalid, OSError, KeyError) as e:
            raise ValueError(f"reading {self.fmt} file {self.path!r} failed: {e}") from e
        if self.hive:  # Ray's default partitioning: key=value directories become columns
            for part in os.path.dirname(self.path).split("/"):
                key, eq, value = part.partition("=")
                if eq and key and key not in table.column_names:
                    table = table.append_column(key, pa.array([value] * table.num_rows, pa.string()))
        if self.include_path:
            table = table.append_column("path", pa.array([self.path] * table.num_rows, pa.string()))
        return table

    def _read(self) -> pa.Table:
        if self.fmt == "parquet":
            import pyarrow.parquet as pq
            return pq.read_table(self.path, columns=self.columns, filesystem=self.filesystem, **self.reader_args)
        source = self.filesystem.open_input_stream(self.path, **self.open_args) if self.filesystem else self.path
        if self.fmt == "csv":
            import pyarrow.csv as pcsv
            table = pcsv.read_csv(source, **self.reader_args)
        else:
            import pyarrow.json as pjson
            try:
                table = pjson.read_json(source, **self.reader_args)
            except pa.ArrowInvalid:  # one JSON array of records, not JSON lines: pandas reads that
                import pandas as pd
                if self.filesystem or self.reader_args:
                    raise
                table = pa.Table.from_pandas(pd.read_json(self.path), preserve_index=False)
        return table.select(self.columns) if self.columns else table


def _read(paths: Any, fmt: str, what: str, suffixes: tuple[str, ...], columns: list | None, filesystem: Any,
          open_args: dict | None, partition_filter: Any, partitioning: Any, include_paths: bool,
          ignore_missing_paths: bool, shuffle: Any, file_extensions: list[str] | None, skip_paths: Any,
          remote_args: dict, reader_args: dict) -> Dataset:
    """Ray's file-reading arguments, the same for every format. Unused, as said in the readers'
    docs: parallelism/override_num_blocks (a block is a file), concurrency."""
    exts = tuple("." + e.lstrip(".") for e in file_extensions) if file_extensions else suffixes
    files = _expand(paths, exts, what, filesystem, ignore_missing_paths)
    if file_extensions:
        files = [f for f in files if f.endswith(exts)]
    if skip_paths:
        skipped = {skip_paths} if isinstance(skip_paths, str) else set(skip_paths)
        files = [f for f in files if f not in skipped]
    if partition_filter is not None:
        files = list(partition_filter(files))
    if shuffle is not None:
        import random
        random.Random(getattr(shuffle, "seed", None)).shuffle(files)  # "files", or Ray's FileShuffleConfig
    hive = partitioning is not None and getattr(partitioning, "style", "hive") == "hive"
    sources = []
    for f in files:
        src = _ReadFile(f, fmt, columns, filesystem, open_args, include_paths, hive, reader_args)
        if remote_args:
            src.remote_args = remote_args  # type: ignore[attr-defined]  # the read task's options (_submit)
        sources.append(src)
    return Dataset(sources)


class _Hive:
    """Ray's default `partitioning=Partitioning("hive")` for read_parquet."""

    style = "hive"


@takes_remote_args(keywords=READ_KEYWORDS, var_name=None)
def read_parquet(paths: Any, *, filesystem: Any = None, catalog: Any = None, columns: list[str] | None = None,
                 parallelism: int = -1, tensor_column_schema: dict | None = None, partition_filter: Any = None,
                 partitioning: Any = _Hive(), shuffle: Any = None, include_paths: bool = False,
                 include_row_hash: bool = False, file_extensions: list[str] | None = None,
                 ignore_missing_paths: bool = False, skip_paths: Any = None, override_num_blocks: int | None = None,
                 _remote_args: dict, **arrow_parquet_args: Any) -> Dataset:
    """One read task per file. Ray's arguments: filesystem (pyarrow.fs), columns, hive
    partition columns from key=value directories (partitioning=None: none), partition_filter,
    shuffle ("files" or a FileShuffleConfig), include_paths (a "path" column), file_extensions,
    ignore_missing_paths, skip_paths, the read tasks' options (num_cpus=, resources=, ...,
    ray_remote_args=) and pyarrow.parquet.read_table's arguments. parallelism and
    override_num_blocks are accepted and unused (a block is a file); catalog,
    tensor_column_schema and include_row_hash are not built and say so."""
    for name, value in (("catalog", catalog), ("tensor_column_schema", tensor_column_schema),
                        ("include_row_hash", include_row_hash or None)):
        if value is not None:
            raise ValueError(f"read_parquet({name}=...) is not supported here.")
    return _read(paths, "parquet", "read_parquet", (".parquet", ".pq"), columns, filesystem, None, partition_filter,
                 partitioning, include_paths, ignore_missing_paths, shuffle, file_extensions, skip_paths,
                 _remote_args, arrow_parquet_args)


@takes_remote_args(keywords=READ_KEYWORDS, var_name=None)
def read_csv(paths: Any, *, filesystem: Any = None, parallelism: int = -1, arrow_open_stream_args: dict | None = None,
             partition_filter: Any = None, partitioning: Any = None, include_paths: bool = False,
             ignore_missing_paths: bool = False, shuffle: Any = None, file_extensions: list[str] | None = None,
             override_num_blocks: int | None = None, columns: list[str] | None = None, _remote_args: dict,
             **arrow_csv_args: Any) -> Dataset:
    """As read_parquet; arrow_csv_args (parse_options, read_options, convert_options) go to
    pyarrow.csv.read_csv. columns (ours) keeps only those columns."""
    return _read(paths, "csv", "read_csv", (".csv",), columns, filesystem, arrow_open_stream_args, partition_filter,
                 partitioning, include_paths, ignore_missing_paths, shuffle, file_extensions, None, _remote_args,
                 arrow_csv_args)


@takes_remote_args(keywords=READ_KEYWORDS, var_name=None)
def read_json(paths: Any, *, lines: bool = False, filesystem: Any = None, parallelism: int = -1,
              arrow_open_stream_args: dict | None = None, partition_filter: Any = None, partitioning: Any = None,
              include_paths: bool = False, ignore_missing_paths: bool = False, shuffle: Any = None,
              file_extensions: list[str] | None = None, override_num_blocks: int | None = None,
              columns: list[str] | None = None, _remote_args: dict, **arrow_json_args: Any) -> Dataset:
    """As read_csv, for JSON lines (pyarrow.json.read_json, with arrow_json_args) or a file
    holding one JSON array of records (read by pandas); `lines` is accepted: both are read."""
    return _read(paths, "json", "read_json", (".json", ".jsonl"), columns, filesystem, arrow_open_stream_args,
                 partition_filter, partitioning, include_paths, ignore_missing_paths, shuffle, file_extensions, None,
                 _remote_args, arrow_json_args)
