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
from .dataset import DataContext, Dataset, from_blocks


def range(n: int, *, override_num_blocks: int | None = None, parallelism: int | None = None) -> Dataset:  # noqa: A001
    """Rows {"id": 0} ... {"id": n-1}, made in the cluster (nothing is put from the driver)."""
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"range(n) needs a non-negative int, got {n!r}.")
    blocks = override_num_blocks or parallelism or max(1, min(200, -(-n // DataContext.get_current().target_max_block_rows)))
    bounds = [n * i // blocks for i in builtins.range(blocks + 1)]
    return Dataset([_RangeBlock(lo, hi) for lo, hi in zip(bounds, bounds[1:])])


class _RangeBlock:
    def __init__(self, lo: int, hi: int) -> None:
        self.lo, self.hi = lo, hi

    def __call__(self) -> pa.Table:
        return pa.table({"id": np.arange(self.lo, self.hi, dtype=np.int64)})


def from_items(items: list, *, override_num_blocks: int | None = None) -> Dataset:
    """A list of dicts (rows) or of values (stored under "item")."""
    items = list(items)
    size = DataContext.get_current().target_max_block_rows
    blocks = override_num_blocks or max(1, -(-len(items) // size))
    step = max(1, -(-len(items) // blocks))
    return from_blocks([B.from_rows(items[i:i + step], "from_items") for i in builtins.range(0, len(items), step)])


def from_pandas(dfs: Any) -> Dataset:
    import pandas as pd
    dfs = dfs if isinstance(dfs, list) else [dfs]
    for d in dfs:
        if not isinstance(d, pd.DataFrame):
            raise TypeError(f"from_pandas takes pandas DataFrames, got {type(d).__name__}.")
    return from_blocks([B.from_batch(d, "from_pandas") for d in dfs])  # object columns Arrow cannot hold: pickled


def from_arrow(tables: Any) -> Dataset:
    tables = tables if isinstance(tables, list) else [tables]
    for t in tables:
        if not isinstance(t, pa.Table):
            raise TypeError(f"from_arrow takes pyarrow Tables, got {type(t).__name__}.")
    return from_blocks(tables)


def from_numpy(arrays: Any) -> Dataset:
    arrays = arrays if isinstance(arrays, list) else [arrays]
    return from_blocks([B.from_batch({"data": a}, "from_numpy") for a in arrays])


def _expand(paths: Any, suffixes: tuple[str, ...], what: str) -> list[str]:
    """Files, directories (their files, recursively) and globs; every pattern must match."""
    out: list[str] = []
    for p in [paths] if isinstance(paths, (str, os.PathLike)) else list(paths):
        p = os.fspath(p)
        if any(ch in p for ch in "*?["):
            found = sorted(glob.glob(p, recursive=True))
            if not found:
                raise FileNotFoundError(f"{what}: the pattern {p!r} matches no file.")
            out.extend(found)
        elif os.path.isdir(p):
            found = sorted(os.path.join(d, f) for d, _, fs in os.walk(p) for f in fs
                           if f.endswith(suffixes) and not f.startswith((".", "_")))
            if not found:
                raise FileNotFoundError(f"{what}: the directory {p!r} has no {'/'.join(suffixes)} files.")
            out.extend(found)
        elif os.path.exists(p):
            out.append(p)
        else:
            raise FileNotFoundError(f"{what}: no such file or directory: {p!r}.")
    return out


class _ReadFile:
    def __init__(self, path: str, fmt: str, columns: list | None) -> None:
        self.path, self.fmt, self.columns = path, fmt, columns

    def __call__(self) -> pa.Table:
        try:
            if self.fmt == "parquet":
                import pyarrow.parquet as pq
                return pq.read_table(self.path, columns=self.columns)
            if self.fmt == "csv":
                import pyarrow.csv as pcsv
                table = pcsv.read_csv(self.path)
            else:
                import pyarrow.json as pjson
                table = pjson.read_json(self.path)
            return table.select(self.columns) if self.columns else table
        except (pa.ArrowInvalid, OSError, KeyError) as e:
            raise ValueError(f"reading {self.fmt} file {self.path!r} failed: {e}") from e


def read_parquet(paths: Any, *, columns: list[str] | None = None, **_kw: Any) -> Dataset:
    return Dataset([_ReadFile(p, "parquet", columns) for p in _expand(paths, (".parquet", ".pq"), "read_parquet")])


def read_csv(paths: Any, *, columns: list[str] | None = None, **_kw: Any) -> Dataset:
    return Dataset([_ReadFile(p, "csv", columns) for p in _expand(paths, (".csv",), "read_csv")])


def read_json(paths: Any, *, columns: list[str] | None = None, **_kw: Any) -> Dataset:
    return Dataset([_ReadFile(p, "json", columns) for p in _expand(paths, (".json", ".jsonl"), "read_json")])
