"""Blocks: a dataset's partitions, each a `pyarrow.Table` in the object store (pickled with
protocol 5, so its Arrow buffers travel out of band and a reader maps them zero-copy).

Conversions between a block and the batch formats a user function sees, and back from what
it returns. A function that returns the wrong thing gets an error naming the operator, the
batch and what was expected.

A column Arrow cannot hold (user objects, mixed types) becomes a `runtime.python_object`
column (pickled values, see pyobject.py) instead of failing; the conversions here turn it
back into the objects.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pyarrow as pa

from . import pyobject

BATCH_FORMATS = ("default", "pandas", "pyarrow", "numpy")


def to_batch(block: pa.Table, batch_format: str) -> Any:
    if batch_format in ("default", "pandas"):
        return to_pandas(block)
    if batch_format == "pyarrow":
        return block
    if batch_format == "numpy":
        return {name: _column_to_numpy(block.column(name)) for name in block.column_names}
    raise ValueError(f"batch_format must be one of {', '.join(BATCH_FORMATS)}, got {batch_format!r}.")


def to_pandas(block: pa.Table) -> Any:
    """The block as a DataFrame; python-object columns hold the objects (dtype object)."""
    df = block.to_pandas()
    for name in _python_object_columns(block):
        df[name] = pyobject.to_objects(block.column(name))
    return df


def _python_object_columns(block: pa.Table) -> list[str]:
    return [f.name for f in block.schema if pyobject.is_python_object(f.type)]


def _column_to_numpy(col: pa.ChunkedArray) -> np.ndarray:
    if pyobject.is_python_object(col.type):
        return pyobject.to_objects(col)
    try:
        return col.to_numpy()
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return np.array(col.to_pylist(), dtype=object)  # nested or mixed values


def from_batch(out: Any, what: str) -> pa.Table:
    """A user function's batch output as a block; `what` names the operator and the batch."""
    import pandas as pd
    if isinstance(out, pa.Table):
        return out
    if isinstance(out, pd.DataFrame):
        return _from_pandas(out)
    if isinstance(out, dict):
        try:
            return pa.table({k: _to_arrow_column(v) for k, v in out.items()})
        except (pa.ArrowInvalid, pa.ArrowTypeError, ValueError, TypeError) as e:
            raise TypeError(f"{what} returned a dict whose columns Arrow cannot hold as one table: {e}") from e
    raise TypeError(f"{what} returned {type(out).__name__}; expected a pandas.DataFrame, a pyarrow.Table or a "
                    "dict of column name -> array (all of one length).")


def _from_pandas(df: Any) -> pa.Table:
    """A DataFrame as a block; columns Arrow cannot hold (object columns of user objects or
    mixed types) become python-object columns."""
    try:
        return pa.Table.from_pandas(df, preserve_index=False)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        names = [str(c) for c in df.columns]
        cols = [_pandas_column(df.iloc[:, i]) for i in range(df.shape[1])]
        return pa.Table.from_arrays(cols, names=names)


def _pandas_column(series: Any) -> pa.Array:
    try:
        return pa.Array.from_pandas(series)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        return pyobject.to_arrow([None if _is_missing(v) else v for v in series])


def _is_missing(v: Any) -> bool:
    """None and NaN-like scalars are nulls (as Arrow's own pandas conversion treats them)."""
    return v is None or (isinstance(v, float) and math.isnan(v))


def _to_arrow_column(v: Any) -> Any:
    if isinstance(v, np.ndarray) and v.ndim > 1:  # e.g. images: one list<...> value per row
        return pa.array(list(v))
    return pyobject.column(v)


def from_rows(rows: list[Any], what: str) -> pa.Table:
    """Rows (dicts) as a block; a non-dict row is stored under the column "item" (as Ray does)."""
    if not rows:
        return pa.table({})
    if all(isinstance(r, dict) for r in rows):
        try:
            return pa.Table.from_pylist(rows)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
            return _from_rows_by_column(rows, what)
    if any(isinstance(r, dict) for r in rows):
        raise TypeError(f"{what} produced a mix of dict rows and other values; return dicts (column -> value).")
    return pa.table({"item": pyobject.column(rows if not isinstance(rows[0], np.ndarray) else list(rows))})


def _from_rows_by_column(rows: list[dict], what: str) -> pa.Table:
    """Rows Arrow cannot take as a whole: each column on its own, native where Arrow can hold
    it and python objects where it cannot (a missing key is null, as in from_pylist)."""
    names: dict[str, None] = {}
    for r in rows:
        names.update(dict.fromkeys(r))
    try:
        return pa.table({n: pyobject.column([r.get(n) for r in rows]) for n in names})
    except (pa.ArrowInvalid, pa.ArrowTypeError, ValueError, TypeError) as e:
        raise TypeError(f"{what} produced rows Arrow cannot hold as one table: {e}") from e


def rows_of(block: pa.Table) -> list[dict]:
    """The rows as dicts; python-object values come back as the objects."""
    return block.to_pylist()


def concat(blocks: list[pa.Table]) -> pa.Table:
    """The blocks one after another. Missing columns are filled with nulls and types widened
    where Arrow can (int32 -> int64, int -> double); anything else is a TypeError showing both
    schemas."""
    blocks = [b for b in blocks if b.num_columns]
    if not blocks:
        return pa.table({})
    try:
        return pa.concat_tables(blocks, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        first, other = mismatched_schemas([b.schema for b in blocks]) or (blocks[0].schema, blocks[-1].schema)
        raise TypeError(f"Blocks with different schemas cannot be put together ({e}):\n{first}\nand\n{other}") from e


def mismatched_schemas(schemas: list[pa.Schema], same_names: bool = False) -> tuple[pa.Schema, pa.Schema] | None:
    """The first schema and the first one that cannot be merged with it (different types that
    do not widen, or, with same_names, different column names), or None if all agree."""
    schemas = [s for s in schemas if len(s)]  # a block with no columns (no rows) fits anything
    for other in schemas[1:]:
        if same_names and set(other.names) != set(schemas[0].names):
            return schemas[0], other
        try:
            pa.unify_schemas([schemas[0], other], promote_options="permissive")
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            return schemas[0], other
    return None


AUTO_BATCH_BYTES = 16 * 1024 * 1024  # batch_size="auto": about this much of a block per batch (Ray's 16 MiB)


def map_batches(call: Any, block: pa.Table, batch_size: int | None | str, batch_format: str, fn_args: tuple,
                fn_kwargs: dict, name: str) -> pa.Table:
    """`call` on each batch of the block, the outputs as one block: map_batches' loop, the same
    in a task and in a pool actor. batch_size None: the whole block; "auto": rows of about
    AUTO_BATCH_BYTES."""
    if batch_size == "auto":
        batch_size = max(1, AUTO_BATCH_BYTES * block.num_rows // block.nbytes) if block.nbytes else None
    if batch_format in ("default", "pandas") and batch_size is not None and _pandas_once(block, batch_size):
        return _map_pandas_batches(call, block, batch_size, fn_args, fn_kwargs, name)
    outs = []
    for i, batch in enumerate(batches(block, batch_size)):
        out = call(to_batch(batch, batch_format), *fn_args, **fn_kwargs)
        outs.append(from_batch(out, f"{name} on batch {i} ({batch.num_rows} rows)"))
    return concat(outs)


def _pandas_once(block: pa.Table, batch_size: int) -> bool:
    """The block may be converted to pandas once and sliced: each slice is then what converting
    that slice alone gives. Not so with nulls (a slice without one keeps int64, the whole block
    becomes float64) or python-object columns."""
    return (block.num_rows > batch_size and not _python_object_columns(block)
            and all(col.null_count == 0 for col in block.columns))


def _map_pandas_batches(call: Any, block: pa.Table, batch_size: int, fn_args: tuple, fn_kwargs: dict,
                        name: str) -> pa.Table:
    """map_batches over pandas batches with one Arrow-to-pandas conversion for the block and,
    when every batch gives back a frame of the same columns and dtypes, one conversion back:
    per 4,096-row batch the two conversions cost more than most functions do
    (data_map_batches_s: 0.81 s before, 0.31 s after, one run each; docs/benchmarks.md)."""
    import pandas as pd
    df = to_pandas(block)
    outs = []
    for start in range(0, len(df), batch_size):
        batch = df.iloc[start:start + batch_size]
        batch.index = pd.RangeIndex(len(batch))  # as the slice converted alone (copy-on-write: a new frame)
        outs.append(call(batch, *fn_args, **fn_kwargs))
    first = outs[0]
    if all(isinstance(o, pd.DataFrame) and o.columns.equals(first.columns) for o in outs):
        whole = pd.concat(outs, ignore_index=True)
        # Batches whose dtypes differed were promoted by concat: then each is converted alone,
        # as before, and Arrow says what it makes of them.
        if whole.dtypes.equals(first.dtypes):
            return _from_pandas(whole)
    return concat([from_batch(o, f"{name} on batch {i} ({min(batch_size, len(df) - i * batch_size)} rows)")
                   for i, o in enumerate(outs)])


def compact(block: pa.Table) -> pa.Table:
    """The block on buffers of its own size. A slice (or a concatenation of slices) still points
    at its source's whole buffers, and pickling ships all of them: 10 rows sliced from a 16 MB
    table would store 16 MB. Copied only when that much is wasted."""
    if block.num_rows and block.get_total_buffer_size() > 2 * block.nbytes + 4096:
        import numpy as np
        return block.take(np.arange(block.num_rows))
    return block


def batches(block: pa.Table, batch_size: int | None) -> list[pa.Table]:
    if batch_size is None or block.num_rows <= batch_size:
        return [block]
    return [block.slice(i, batch_size) for i in range(0, block.num_rows, batch_size)]


# -- checks shared by the operators (all_to_all.py, aggregate.py, grouped.py, dataset.py) --------

def require_columns(block: pa.Table, cols: list[str], what: str) -> None:
    """KeyError naming the first missing column and listing the block's columns."""
    missing = [c for c in cols if c not in block.column_names]
    if missing:
        raise KeyError(f"{what}: no column {missing[0]!r}; the columns are {block.column_names}. "
                       f"{what} takes names of existing columns.")


def key_list(key: Any, what: str) -> list[str]:
    """A key given as a column name or a list of names, as a non-empty list."""
    keys = [key] if isinstance(key, str) else key
    if not isinstance(keys, (list, tuple)) or not keys or not all(isinstance(k, str) for k in keys):
        raise ValueError(f"{what}: the key must be a column name or a non-empty list of column names, got {key!r}.")
    return list(keys)
