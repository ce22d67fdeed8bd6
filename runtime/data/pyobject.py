"""Python objects in Arrow blocks: the `runtime.python_object` extension type.

Blocks are Arrow tables. A column whose values Arrow cannot hold (instances of a user class,
a mix of ints and strings, ...) would otherwise make the whole block fail, so, as Ray does,
such a column is stored as an Arrow extension type whose storage is `binary`: one
cloudpickle payload per value (null stays null). The rest of the block stays columnar; only
that column pays for pickling. Reading it back (`to_pylist`, `to_pandas`, numpy batches)
unpickles the values, so a user function sees the objects it put in.
"""

from __future__ import annotations

from typing import Any

import cloudpickle
import numpy as np
import pyarrow as pa

EXTENSION_NAME = "runtime.python_object"


class PythonObjectType(pa.ExtensionType):
    """Arrow type of a column of pickled Python objects (storage: binary)."""

    def __init__(self) -> None:
        super().__init__(pa.binary(), EXTENSION_NAME)

    def __arrow_ext_serialize__(self) -> bytes:
        return b""  # no parameters: every instance is the same type

    @classmethod
    def __arrow_ext_deserialize__(cls, storage_type: pa.DataType, serialized: bytes) -> PythonObjectType:
        return cls()

    def __arrow_ext_scalar_class__(self) -> type:
        return PythonObjectScalar

    def __reduce__(self) -> tuple:
        return PythonObjectType, ()


class PythonObjectScalar(pa.ExtensionScalar):
    """A value of the column: `as_py()` (and so `Table.to_pylist()`) gives the object back."""

    def as_py(self, **_kwargs: Any) -> Any:
        raw = self.value
        return None if raw is None else cloudpickle.loads(raw.as_py())


def _register() -> None:
    """Register the type once per process (parquet/IPC readers then rebuild it); a second
    registration (module reloaded) is not an error."""
    try:
        pa.register_extension_type(PythonObjectType())
    except pa.ArrowKeyError:
        pass


_register()


def is_python_object(dtype: pa.DataType) -> bool:
    return isinstance(dtype, pa.ExtensionType) and dtype.extension_name == EXTENSION_NAME


def to_arrow(values: Any) -> pa.ExtensionArray:
    """Any sequence of Python values as a python-object column (None stays null)."""
    storage = pa.array([None if v is None else cloudpickle.dumps(v, protocol=5) for v in values], pa.binary())
    return pa.ExtensionArray.from_storage(PythonObjectType(), storage)


def to_objects(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A python-object column as a numpy object array of the original values."""
    out = np.empty(len(col), dtype=object)
    out[:] = [None if raw is None else cloudpickle.loads(raw) for raw in _storage(col).to_pylist()]
    return out


def _storage(col: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray | pa.Array:
    if isinstance(col, pa.ChunkedArray):
        return pa.chunked_array([c.storage for c in col.chunks], pa.binary())
    return col.storage


def column(values: Any) -> pa.Array | pa.ChunkedArray:
    """Values as an Arrow column: native Arrow when it can hold them, python objects otherwise."""
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        return values
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, ValueError, TypeError):
        return to_arrow(list(values))
