"""Datasets on Arrow (Ray's `ray.data`): lazy, streaming, blocks in the object store.

See docs/data.md for what is built and what is not yet.
"""

from __future__ import annotations

from . import aggregate  # ray.data.aggregate: Count, Sum, Min, Max, Mean, Std
from .actor_pool import ActorPoolStrategy
from .context import DataContext
from .dataset import Dataset
from .read_api import (from_arrow, from_dask, from_items, from_numpy, from_pandas, range, read_csv, read_json,
                       read_parquet)

__all__ = ["ActorPoolStrategy", "DataContext", "Dataset", "aggregate", "from_arrow", "from_dask", "from_items",
           "from_numpy", "from_pandas", "range", "read_csv", "read_json", "read_parquet"]
