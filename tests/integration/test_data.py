"""runtime.data against pandas on the same data: creation, transforms, consumption, files, a
dataset larger than the object store streaming through it, and bad input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

import runtime
import runtime.data as rd
from runtime.util import state

pytestmark = pytest.mark.slow


@pytest.fixture
def frame():
    rng = np.random.default_rng(1)
    n = 10_000
    return pd.DataFrame({"k": rng.integers(0, 7, n), "x": rng.random(n),
                         "y": np.where(rng.random(n) < 0.2, np.nan, rng.random(n))})


def test_range_map_batches_filter_and_aggregates_match_pandas(shared_runtime):
    ds = rd.range(100_000, override_num_blocks=7)
    for fmt in ("default", "pandas", "pyarrow", "numpy"):
        def add(batch, fmt=fmt):
            if fmt == "pyarrow":
                import pyarrow.compute as pc
                return batch.append_column("sq", pc.multiply(batch["id"], batch["id"]))
            if fmt == "numpy":
                return {"id": batch["id"], "sq": batch["id"] * batch["id"]}
            return batch.assign(sq=batch["id"] * batch["id"])
        out = ds.map_batches(add, batch_format=fmt, batch_size=1000).filter(lambda r: r["id"] % 3 == 0)
        ref = pd.DataFrame({"id": np.arange(100_000)})
        ref = ref.assign(sq=ref.id * ref.id)[ref.id % 3 == 0]
        assert out.count() == len(ref)
        assert out.sum("sq") == int(ref.sq.sum()) and out.min("id") == 0 and out.max("id") == ref.id.max()
        assert out.mean("id") == pytest.approx(ref.id.mean())


def test_from_pandas_columns_nulls_and_to_pandas(shared_runtime, frame):
    ds = rd.from_pandas([frame.iloc[:4000], frame.iloc[4000:]])
    got = ds.add_column("z", lambda df: df["x"] * 2).drop_columns(["k"]).to_pandas()
    want = frame.assign(z=frame.x * 2).drop(columns=["k"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(got, want)
    assert ds.select_columns(["y"]).mean("y") == pytest.approx(frame.y.mean())  # nulls skipped, as pandas
    assert ds.columns() == ["k", "x", "y"]
    assert len(ds.take(5)) == 5 and ds.take_batch(3)["x"].tolist() == frame.x[:3].tolist()


def test_items_map_flat_map_union_limit_split(shared_runtime):
    ds = rd.from_items([{"v": i} for i in range(100)])
    assert ds.map(lambda r: {"v": r["v"] + 1}).sum("v") == sum(range(1, 101))
    assert ds.flat_map(lambda r: [r, r]).count() == 200
    assert rd.from_items([1, 2, 3]).take_all() == [{"item": 1}, {"item": 2}, {"item": 3}]
    both = ds.union(rd.from_items([{"v": 1000}]))
    assert both.count() == 101 and both.max("v") == 1000
    assert [r["v"] for r in ds.limit(3).take_all()] == [0, 1, 2]
    parts = rd.range(100, override_num_blocks=4).split(2)
    assert sum(p.count() for p in parts) == 100


def test_split_equal_drops_the_remainder_as_ray(shared_runtime):
    ds = rd.range(10, override_num_blocks=3)
    assert [p.count() for p in ds.split(3)] == [4, 3, 3]
    equal = ds.split(3, equal=True)
    assert [p.count() for p in equal] == [3, 3, 3]  # row 9 is dropped, as Ray does
    assert [r["id"] for p in equal for r in p.take_all()] == list(range(9))
    assert [p.count() for p in rd.range(2).split(4)] == [1, 1, 0, 0]
    assert [p.count() for p in ds.split(2, equal=True, locality_hints=["a", "b"])] == [5, 5]
    with pytest.raises(ValueError, match="locality_hints must have n=2 entries"):
        ds.split(2, locality_hints=["a"])
    with pytest.raises(ValueError, match="n must be a positive int"):
        ds.split(0)


def test_nested_arrow_types_pandas_cannot_hold(shared_runtime):
    table = pa.table({"tags": pa.array([["a", "b"], [], None]), "point": pa.array([{"x": 1, "y": 2}] * 3)})
    ds = rd.from_arrow(table).map_batches(lambda t: t, batch_format="pyarrow")
    assert ds.schema().field("tags").type == pa.list_(pa.string())
    assert ds.take_all()[0] == {"tags": ["a", "b"], "point": {"x": 1, "y": 2}}


def _nested_table(n: int = 3000) -> pa.Table:
    """Types pandas cannot hold as such: lists with nulls, structs of lists, maps, decimals,
    fixed-size lists, timestamps."""
    ids = np.random.default_rng(3).permutation(n)
    return pa.table({
        "id": ids, "g": ids % 5,
        "tags": [[f"t{j}" for j in range(i % 4)] if i % 7 else None for i in ids],
        "point": [{"x": int(i), "y": [float(i), None]} for i in ids],
        "m": pa.array([[("a", int(i))] if i % 2 else [] for i in ids], type=pa.map_(pa.string(), pa.int64())),
        "dec": pa.array(ids).cast(pa.decimal128(22, 2)),
        "ts": pa.array(ids.astype("datetime64[ms]")),
        "fsl": pa.FixedSizeListArray.from_arrays(pa.array(np.repeat(ids, 2).astype("float32")), 2)})


def _table(ds: rd.Dataset) -> pa.Table:
    """The dataset's blocks as one table (empty blocks left out: they may have no columns)."""
    return pa.concat_tables([t for t in runtime.get(ds.to_arrow_refs()) if t.num_rows])


def test_nested_arrow_types_through_every_operator(shared_runtime, tmp_path):
    """Checked against pyarrow on the same table: the columns keep their exact types."""
    table = _nested_table()
    ds = rd.from_arrow([table.slice(i, 500) for i in range(0, table.num_rows, 500)])
    by_id = table.sort_by("id")
    assert ds.schema() == table.schema
    assert _table(ds.sort("id")).equals(by_id)
    assert _table(ds.sort("id", descending=True)).equals(table.sort_by([("id", "descending")]))
    for shuffled in (ds.random_shuffle(seed=1), ds.repartition(7), ds.repartition(3, shuffle=True)):
        assert _table(shuffled).sort_by("id").equals(by_id)
    thirds = by_id.filter(pa.array(by_id["id"].to_numpy() % 3 == 0))
    assert _table(ds.filter(lambda r: r["id"] % 3 == 0)).sort_by("id").equals(thirds)
    assert _table(ds.union(ds)).sort_by("id").equals(pa.concat_tables([table, table]).sort_by("id"))
    head, tail = ds.split_at_indices([1234])
    assert pa.concat_tables([_table(head), _table(tail)]).equals(table)
    assert _table(ds.select_columns(["id"]).zip(ds.drop_columns(["id"]))).equals(table)
    groups = ds.groupby("g").map_groups(lambda t: t.sort_by("id"), batch_format="pyarrow")
    assert _table(groups).sort_by("id").equals(by_id)
    assert ds.sort("id").take(1) == by_id.slice(0, 1).to_pylist()
    batch = next(iter(ds.sort("id").iter_batches(batch_size=100, batch_format="pyarrow")))
    assert batch.equals(by_id.slice(0, 100))
    ds.write_parquet(str(tmp_path / "nested"))
    assert _table(rd.read_parquet(str(tmp_path / "nested"))).sort_by("id").equals(by_id)


def test_write_skips_empty_blocks(shared_runtime, tmp_path):
    """More blocks than groups: map_groups leaves empty blocks (without columns); as in Ray,
    they get no file, so the files read back as one schema."""
    ds = rd.range(1000, override_num_blocks=8).add_column("g", lambda df: df["id"] % 2)
    out = ds.groupby("g").map_groups(lambda df: df.assign(n=len(df)), batch_format="pandas")
    assert len(out.to_arrow_refs()) > 2  # some of them empty
    for fmt in ("parquet", "csv", "json"):
        getattr(out, f"write_{fmt}")(str(tmp_path / fmt))
        assert 1 <= len(list((tmp_path / fmt).iterdir())) <= 2
        back = getattr(rd, f"read_{fmt}")(str(tmp_path / fmt)).to_pandas().sort_values("id")
        assert back["id"].tolist() == list(range(1000)) and set(back["n"]) == {500}


def test_empty_dataset(shared_runtime):
    ds = rd.from_items([])
    assert ds.count() == 0 and ds.take_all() == [] and ds.sum("x") is None


def test_files_roundtrip_parquet_csv_json(shared_runtime, frame, tmp_path):
    ds = rd.from_pandas(frame).map_batches(lambda df: df, batch_size=2500)
    for fmt in ("parquet", "csv", "json"):
        getattr(ds, f"write_{fmt}")(str(tmp_path / fmt))
        back = getattr(rd, f"read_{fmt}")(str(tmp_path / fmt)).to_pandas()
        assert len(back) == len(frame)
        assert back.x.sum() == pytest.approx(frame.x.sum())
    glob_ds = rd.read_parquet(str(tmp_path / "parquet" / "part-*.parquet"), columns=["k"])
    assert glob_ds.columns() == ["k"] and glob_ds.count() == len(frame)


def test_a_dataset_larger_than_the_object_store_streams_through(ray_start_small_store):
    before = sum(s["spilled_bytes_total"] for s in state.object_store_stats())
    n = 40_000_000  # 40 M rows x 2 int64 columns = 640 MB through a 100 MB store
    total = rd.range(n, override_num_blocks=100).map_batches(
        lambda b: {"id": b["id"], "two": b["id"] * 2}, batch_format="numpy", batch_size=None).sum("two")
    assert total == n * (n - 1)
    spilled = sum(s["spilled_bytes_total"] for s in state.object_store_stats()) - before
    assert spilled == 0, f"{spilled} bytes were spilled: blocks were not streamed"


@pytest.fixture
def ray_start_small_store(orrery_leak_check):
    from runtime._testing.pytest_plugin import start_runtime
    with start_runtime(num_cpus=2, object_store_memory=100 * 1024 * 1024) as ctx:
        yield ctx


def test_bad_input_is_named(shared_runtime, tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file or directory: .*missing.parquet"):
        rd.read_parquet(str(tmp_path / "missing.parquet"))
    with pytest.raises(FileNotFoundError, match=r"the pattern .*\*.csv.* matches no file"):
        rd.read_csv(str(tmp_path / "*.csv"))
    with pytest.raises(TypeError, match=r"MapBatches\(bad\) on batch 0 \(10 rows\) returned list; expected"):
        def bad(df):
            return [1, 2]
        rd.range(10).map_batches(bad).count()
    with pytest.raises(ValueError, match="batch_format must be one of"):
        rd.range(10).map_batches(lambda b: b, batch_format="polars")
    with pytest.raises(KeyError, match="no column 'nope'"):
        rd.range(10).select_columns(["nope"]).count()
