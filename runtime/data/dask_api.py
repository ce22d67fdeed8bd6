"""Datasets and Dask DataFrames, without the data going through the driver.

- `Dataset.to_dask()`: the dataset is run (its blocks stay in the object store) and each
  block becomes one partition: a small Dask graph `{block key: ObjectRef, partition key:
  (to_pandas, block key)}`. On the runtime's Dask scheduler (`enable_dask_on_runtime()`) the
  ObjectRef is a dependency like any other, so the conversion to pandas runs in a task next to
  the block; on another scheduler the partition task fetches the block itself.
- `from_dask(ddf)` (read_api.py, on `partition_refs` here): the DataFrame is persisted on the runtime (`runtime_dask_get` with
  `runtime_persist=True`), which leaves one pandas partition per ObjectRef in the object store;
  those refs are the dataset's sources, converted to Arrow by the per-block tasks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pyarrow as pa

from .._core.object_ref import ObjectRef
from . import block as B
from .plan import _remote

if TYPE_CHECKING:
    import pandas as pd

    from .dataset import Dataset


def to_dask(ds: Dataset, meta: Any = None, verify_meta: bool = True) -> Any:
    """A dask DataFrame with one partition per block of `ds` (Ray's `Dataset.to_dask`)."""
    import dask
    import dask.dataframe as dd
    refs = ds.to_arrow_refs()
    if meta is None:
        meta = _meta(refs)
    parts = []
    for ref in refs:
        block = dask.delayed(ref, name=f"runtime-block-{ref.hex()}")  # a graph key holding the ref
        parts.append(dask.delayed(_partition, pure=True)(block, meta, dask_key_name=f"runtime-to-pandas-{ref.hex()}"))
    return dd.from_delayed(parts, meta=meta, verify_meta=verify_meta)


def _meta(refs: list[ObjectRef]) -> pd.DataFrame:
    """An empty DataFrame of the blocks' columns and dtypes: the schema is read by a task, so
    no block comes to the driver."""
    import runtime
    schema_of = _remote(_schema_of)
    for ref in refs:
        schema = runtime.get(schema_of.remote(ref))
        if len(schema):
            return B.to_pandas(schema.empty_table())
    return B.to_pandas(pa.table({}))


def _schema_of(block: pa.Table) -> pa.Schema:
    return block.schema


def _partition(block: Any, meta: pd.DataFrame) -> pd.DataFrame:
    """In a task (or, off the runtime's scheduler, wherever Dask runs it): one block as pandas."""
    if isinstance(block, ObjectRef):  # a scheduler that hands over the graph value itself
        import runtime
        block = runtime.get(block)
    if not block.num_columns:  # an empty block has no columns: give it the dataset's
        return meta.iloc[:0].copy()
    return B.to_pandas(block)


def partition_refs(df: Any) -> list[ObjectRef]:
    """The ObjectRefs of a dask DataFrame's (or Series') partitions, persisted on the runtime:
    the sources of `from_dask`'s dataset (read_api.py, which makes the Dataset: this module
    sits below dataset.py)."""
    import dask
    import dask.dataframe as dd

    from ..util.dask import runtime_dask_get
    if isinstance(df, dd.Series):
        df = df.to_frame()
    if not isinstance(df, dd.DataFrame):
        raise TypeError(f"from_dask takes a dask.dataframe DataFrame or Series, got {type(df).__name__}.")
    (kept,) = dask.persist(df, scheduler=runtime_dask_get, runtime_persist=True)
    graph = kept.__dask_graph__()
    return [_ref_in(graph, key) for key in kept.__dask_keys__()]


def _ref_in(graph: Any, key: Any) -> ObjectRef:
    """The ObjectRef a persisted partition's graph entry holds: as it is, in a DataNode, or
    behind an Alias (another key)."""
    from dask._task_spec import Alias
    node = graph[key]
    seen = 0
    while isinstance(node, Alias) and seen < len(graph):
        node, seen = graph[node.target], seen + 1
    value = getattr(node, "value", node)
    if not isinstance(value, ObjectRef):
        raise TypeError(f"from_dask: the persisted partition {key!r} is a {type(value).__name__}, not an "
                           "ObjectRef; this version of Dask persists differently than expected.")
    return value
