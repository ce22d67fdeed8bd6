"""map_batches over pandas batches (runtime/data/block.py): the block is converted to pandas once
and sliced, and the outputs converted back once, yet every call sees what converting its slice
alone gives, and the result is the one batch-by-batch conversion gives."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from runtime.data import block as B

ROWS, SIZE = 10_000, 4096  # three batches, the last one short


def one_by_one(fn, blk: pa.Table, size: int) -> pa.Table:
    """The reference: each slice converted alone, each output converted alone."""
    return B.concat([B.from_batch(fn(B.to_batch(s, "pandas")), "ref") for s in B.batches(blk, size)])


def run(fn, blk: pa.Table, size: int = SIZE) -> pa.Table:
    return B.map_batches(fn, blk, size, "pandas", (), {}, "test")


def test_batches_are_indexed_from_zero_and_sized_as_asked():
    blk = pa.table({"id": np.arange(ROWS), "s": [str(i) for i in range(ROWS)]})
    seen = []

    def fn(df):
        seen.append((len(df), df.index[0], df.index[-1], df["id"].iloc[0]))
        return df.assign(y=df["id"] * 2)

    out = run(fn, blk)
    assert seen == [(4096, 0, 4095, 0), (4096, 0, 4095, 4096), (1808, 0, 1807, 8192)]
    assert out.equals(one_by_one(lambda df: df.assign(y=df["id"] * 2), blk, SIZE))


def test_a_batch_changed_in_place_changes_no_other_batch_nor_the_block():
    blk = pa.table({"id": np.arange(ROWS)})

    def fn(df):
        df["id"] = df["id"] * 0 - 1  # writes into its own batch only (pandas copy-on-write)
        return df

    out = run(fn, blk)
    assert out.column("id").to_pylist() == [-1] * ROWS
    assert blk.column("id").to_pylist() == list(range(ROWS))


def test_batches_of_differing_dtypes_give_what_one_by_one_gives():
    blk = pa.table({"id": np.arange(ROWS)})

    def fn(df):  # int64 in the first batch, float64 in the others
        return df.assign(y=df["id"] if df["id"].iloc[0] == 0 else df["id"] / 2)

    assert run(fn, blk).equals(one_by_one(fn, blk, SIZE))


def test_a_block_with_nulls_is_converted_slice_by_slice():
    ids = pa.array(list(range(ROWS - 1)) + [None], type=pa.int64())
    blk = pa.table({"id": ids})
    dtypes = []

    def fn(df):
        dtypes.append(str(df["id"].dtype))
        return df

    run(fn, blk)
    assert dtypes == ["int64", "int64", "float64"]  # only the slice holding the null is float


@pytest.mark.parametrize("out", ["dict", "arrow"])
def test_other_outputs_than_frames(out):
    blk = pa.table({"id": np.arange(ROWS)})

    def fn(df):
        cols = {"double": df["id"].to_numpy() * 2}
        return cols if out == "dict" else pa.table(cols)

    result = run(fn, blk)
    assert result.equals(one_by_one(fn, blk, SIZE)) and result.num_rows == ROWS


def test_frames_of_differing_columns_are_converted_one_by_one():
    blk = pa.table({"id": np.arange(ROWS)})

    def fn(df):
        return df.rename(columns={"id": "a" if df["id"].iloc[0] == 0 else "b"})

    result = run(fn, blk)
    assert result.equals(one_by_one(fn, blk, SIZE)) and set(result.column_names) == {"a", "b"}


def test_batch_size_none_is_the_whole_block_and_auto_is_about_16_mib():
    blk = pa.table({"id": np.arange(ROWS)})  # 8 bytes a row
    sizes = []

    def fn(df):
        sizes.append(len(df))
        return df

    B.map_batches(fn, blk, None, "pandas", (), {}, "test")
    assert sizes == [ROWS]
    sizes.clear()
    big = pa.table({"id": np.arange(3 * B.AUTO_BATCH_BYTES // 8)})  # 48 MiB: three batches of 2 Mi rows
    B.map_batches(lambda batch: (sizes.append(len(batch["id"])), batch)[1], big, "auto", "numpy", (), {}, "test")
    assert sizes == [B.AUTO_BATCH_BYTES // 8] * 3
