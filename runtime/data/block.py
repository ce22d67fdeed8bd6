"""Blocks: a dataset's partitions, each a `pyarrow.Table` in the object store (pickled with
protocol 5, so its Arrow buffers travel out of band and a reader maps them zero-copy).

Conversions between a block and the batch formats a user function sees, and back from what
it returns. A function that returns the wrong thing gets an error naming the operator, the
batch and what was expected.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

BATCH_FORMATS = ("default", "pandas", "pyarrow", "numpy")


def to_batch(block: pa.Table, batch_format: str) -> Any:
    if batch_format in ("default", "pandas"):
        return block.to_pandas()
    if batch_format == "pyarrow":
        return block
    if batch_format == "numpy":
        return {name: _column_to_numpy(block.column(name)) for name in block.column_names}
    raise ValueError(f"batch_format must be one of {', '.join(BATCH_FORMATS)}, got {batch_format!r}.")


def _column_to_numpy(col: pa.ChunkedArray) -> np.ndarray:
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
        return pa.Table.from_pandas(out, preserve_index=False)
    if isinstance(out, dict):
        try:
            return pa.table({k: _to_arrow_column(v) for k, v in out.items()})
        except (pa.ArrowInvalid, pa.ArrowTypeError, ValueError, TypeError) as e:
            raise TypeError(f"{what} returned a dict whose columns Arrow cannot hold as one table: {e}") from e
    raise TypeError(f"{what} returned {type(out).__name__}; expected a pandas.DataFrame, a pyarrow.Table or a "
                    "dict of column name -> array (all of one length).")


def _to_arrow_column(v: Any) -> Any:
    if isinstance(v, np.ndarray) and v.ndim > 1:  # e.g. images: one list<...> value per row
        return pa.array(list(v))
    return v


def from_rows(rows: list[Any], what: str) -> pa.Table:
    """Rows (dicts) as a block; a non-dict row is stored under the column "item" (as Ray does)."""
    if not rows:
        return pa.table({})
    if all(isinstance(r, dict) for r in rows):
        try:
            return pa.Table.from_pylist(rows)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            raise TypeError(f"{what} produced rows Arrow cannot hold as one table: {e}") from e
    if any(isinstance(r, dict) for r in rows):
        raise TypeError(f"{what} produced a mix of dict rows and other values; return dicts (column -> value).")
    return pa.table({"item": pa.array(rows) if not isinstance(rows[0], np.ndarray) else pa.array(list(rows))})


def rows_of(block: pa.Table) -> list[dict]:
    return block.to_pylist()


def concat(blocks: list[pa.Table]) -> pa.Table:
    blocks = [b for b in blocks if b.num_columns]
    if not blocks:
        return pa.table({})
    try:
        return pa.concat_tables(blocks, promote_options="default")
    except pa.ArrowInvalid as e:
        raise TypeError(f"blocks with different schemas cannot be put together: {e}") from e


def batches(block: pa.Table, batch_size: int | None) -> list[pa.Table]:
    if batch_size is None or block.num_rows <= batch_size:
        return [block]
    return [block.slice(i, batch_size) for i in range(0, block.num_rows, batch_size)]
