"""runtime.data's all-to-all operators against pandas (and dask.dataframe) on the same data:
sort, groupby aggregations and map_groups, random_shuffle, repartition, zip,
split_at_indices; nulls, empty datasets, laziness, a chain from parquet files, datasets
larger than the object store, and bad input."""

from __future__ import annotations

import contextlib
import sys

import cloudpickle
import numpy as np
import pandas as pd
import pytest

import runtime
import runtime.data as rd
from runtime.data.aggregate import AggregateFn, AggregateFnV2, Count, Max, Mean, Min, Std, Sum

pytestmark = pytest.mark.slow

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import the tests' modules (AbsMax)


@pytest.fixture(scope="module")
def frame():
    """Null keys (k, s), null values (x), a group whose values are all null (k == 5)."""
    rng = np.random.default_rng(7)
    n = 6_000
    k = rng.integers(0, 6, n).astype(float)
    k[rng.random(n) < 0.05] = np.nan
    x = rng.normal(1e6, 10, n)
    x[(rng.random(n) < 0.2) | (k == 5)] = np.nan
    s = np.array(["a", "b", "c", None], dtype=object)[rng.integers(0, 4, n)]
    return pd.DataFrame({"k": k, "s": s, "x": x, "i": rng.permutation(n)})


def blocks_of(df: pd.DataFrame, size: int = 1000) -> rd.Dataset:
    return rd.from_pandas([df.iloc[i:i + size] for i in range(0, len(df), size)])


@contextlib.contextmanager
def block_rows(n: int):
    """A small target_max_block_rows: groupby combines in several key ranges."""
    ctx = rd.DataContext.get_current()
    old, ctx.target_max_block_rows = ctx.target_max_block_rows, n
    try:
        yield
    finally:
        ctx.target_max_block_rows = old


def num_blocks(ds: rd.Dataset) -> int:
    return len(ds.to_arrow_refs())


# -- sort ------------------------------------------------------------------------------------

def test_sort_matches_pandas_and_dask(shared_runtime, frame):
    import dask
    import dask.dataframe as dd
    ds = blocks_of(frame)
    by_i = ds.sort("i")
    assert num_blocks(by_i) > 1  # a real exchange: several output blocks, in order
    pd.testing.assert_frame_equal(by_i.to_pandas(), frame.sort_values("i").reset_index(drop=True))
    with dask.config.set(scheduler="sync"):
        want = dd.from_pandas(frame[["i", "x"]], npartitions=3).sort_values("i").compute()  # (dask: Arrow strings)
    pd.testing.assert_frame_equal(by_i.select_columns(["i", "x"]).to_pandas(), want.reset_index(drop=True))

    keys, desc = ["k", "s", "i"], [False, True, False]  # nulls in k and s: last, as pandas' default
    got = ds.sort(keys, descending=desc).to_pandas()
    want = frame.sort_values(keys, ascending=[not d for d in desc], na_position="last").reset_index(drop=True)
    pd.testing.assert_frame_equal(got, want)


def test_sort_descending_with_nulls_last(shared_runtime, frame):
    got = blocks_of(frame).sort("x", descending=True).to_pandas()
    want = frame.sort_values("x", ascending=False, na_position="last").reset_index(drop=True)
    pd.testing.assert_series_equal(got.x, want.x)
    assert sorted(got.i) == sorted(frame.i)  # the same rows (rows with a null x come in any order)


# -- groupby ---------------------------------------------------------------------------------

def expected_aggregates(frame: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    g = frame.groupby(keys, dropna=False)["x"]
    want = pd.DataFrame({"count()": g.size(), "sum(x)": g.sum(min_count=1), "min(x)": g.min(),
                         "max(x)": g.max(), "mean(x)": g.mean(), "std(x)": g.std()}).reset_index()
    return want.sort_values(keys, na_position="last").reset_index(drop=True)


@pytest.mark.parametrize("target_rows", [200_000, 2])  # one combine task / several key ranges
def test_groupby_aggregations_match_pandas(shared_runtime, frame, target_rows):
    ds = blocks_of(frame)
    aggs = (Count(), Sum("x"), Min("x"), Max("x"), Mean("x"), Std("x"))
    with block_rows(target_rows):
        for keys in (["k"], ["k", "s"]):
            grouped = ds.groupby(keys).aggregate(*aggs)
            assert (num_blocks(grouped) > 1) == (target_rows == 2)
            pd.testing.assert_frame_equal(grouped.to_pandas(), expected_aggregates(frame, keys),
                                          check_dtype=False, rtol=1e-9)
        want = expected_aggregates(frame, ["k"])
        for how in ("sum", "min", "max", "mean", "std"):
            got = getattr(ds.groupby("k"), how)("x").to_pandas()
            assert list(got.columns) == ["k", f"{how}(x)"]
            pd.testing.assert_series_equal(got[f"{how}(x)"], want[f"{how}(x)"], rtol=1e-9)
        counted = ds.groupby("k").count().to_pandas()
        assert counted["count()"].tolist() == want["count()"].tolist()
        assert ds.groupby("s").sum(["x", "i"]).columns() == ["s", "sum(x)", "sum(i)"]


def test_groupby_matches_dask(shared_runtime, frame):
    import dask
    import dask.dataframe as dd
    got = blocks_of(frame).groupby("k").mean("x").to_pandas()
    with dask.config.set(scheduler="sync"):
        want = dd.from_pandas(frame, npartitions=4).groupby("k", dropna=False).x.mean().compute()
    want = want.sort_index(na_position="last")
    np.testing.assert_allclose(got["mean(x)"], want.to_numpy(), rtol=1e-9)
    np.testing.assert_array_equal(got.k, want.index.to_numpy())


def test_global_aggregation(shared_runtime, frame):
    ds = blocks_of(frame)
    got = ds.aggregate(Count(), Sum("x"), Mean("x"), Std("x"), Count("x", ignore_nulls=True))
    assert got["count()"] == len(frame) and got["count(x)"] == frame.x.count()
    assert got["sum(x)"] == pytest.approx(frame.x.sum(), rel=1e-12)
    assert got["mean(x)"] == pytest.approx(frame.x.mean(), rel=1e-12)
    assert got["std(x)"] == pytest.approx(frame.x.std(), rel=1e-9) == pytest.approx(ds.std("x"))
    assert ds.groupby(None).max("i").take_all() == [{"max(i)": len(frame) - 1}]


def test_ignore_nulls_false_and_dataset_aggregates_as_ray(shared_runtime, frame):
    """ignore_nulls=False: a group with a null value gets null (Ray's rule); the others match
    pandas. Dataset.sum/min/max/mean/std take a column, a list of columns or None (every
    column), as Ray's."""
    df = frame.assign(y=np.where((frame.k == 1) & (frame.i % 10 == 0), np.nan, frame.i.astype(float)))
    ds = blocks_of(df)
    g = df.groupby("k", dropna=False).y
    has_null = g.apply(lambda v: v.isna().any()).sort_index(na_position="last").to_numpy()
    assert has_null.sum() == 1  # only k == 1
    for how, want in (("sum", g.sum()), ("min", g.min()), ("max", g.max()), ("mean", g.mean()), ("std", g.std())):
        want = want.sort_index(na_position="last").to_numpy()
        skipped = getattr(ds.groupby("k"), how)("y").to_pandas()[f"{how}(y)"].to_numpy(dtype=float)
        np.testing.assert_allclose(skipped, want, rtol=1e-9)
        strict = getattr(ds.groupby("k"), how)("y", ignore_nulls=False).to_pandas()[f"{how}(y)"].to_numpy(dtype=float)
        assert np.isnan(strict[has_null]).all()
        np.testing.assert_allclose(strict[~has_null], want[~has_null], rtol=1e-9)
    assert ds.sum("y", ignore_nulls=False) is None and ds.sum("y") == pytest.approx(df.y.sum(), rel=1e-12)

    numeric = blocks_of(frame[["k", "x", "i"]])
    assert numeric.sum(["x", "i"]) == pytest.approx({"sum(x)": frame.x.sum(), "sum(i)": frame.i.sum()}, rel=1e-12)
    assert numeric.mean() == pytest.approx({f"mean({c})": frame[c].mean() for c in ("k", "x", "i")}, rel=1e-12)
    assert numeric.max("i") == len(frame) - 1 and numeric.min(["i"]) == {"min(i)": 0}
    assert numeric.std("x") == pytest.approx(frame.x.std(), rel=1e-9)
    assert rd.from_items([]).sum() is None  # no columns at all
    assert rd.from_pandas(frame.iloc[:0]).sum(["x", "i"]) == {"sum(x)": None, "sum(i)": None}
    every = numeric.groupby("k").sum().to_pandas()  # on=None: every column but the key, as Ray
    want = frame.groupby("k", dropna=False)[["x", "i"]].sum(min_count=1).sort_index(na_position="last")
    assert list(every.columns) == ["k", "sum(x)", "sum(i)"]
    np.testing.assert_allclose(every[["sum(x)", "sum(i)"]].to_numpy(dtype=float), want.to_numpy(dtype=float), rtol=1e-9)
    with pytest.raises(KeyError, match=r"aggregate: no column 'nope'"):
        numeric.sum("nope")
    with pytest.raises(TypeError, match="ignore_nulls must be True or False"):
        Sum("x", ignore_nulls="no")


def test_custom_aggregate_fn_as_in_ray(shared_runtime, frame):
    """Ray's AggregateFn(init, merge, accumulate_row | accumulate_block, finalize, name), next
    to built-in ones, in one and in several key ranges, against pandas."""
    ds = rd.from_items([{"number": i} for i in range(1, 10)])  # the example of Ray's docs
    prod = AggregateFn(init=lambda column: 1, accumulate_row=lambda a, row: a * row["number"],
                       merge=lambda a1, a2: a1 * a2, name="prod")
    assert ds.aggregate(prod) == {"prod": 362880}

    strings = AggregateFn(  # a set per group; the group's rows as one table
        init=lambda key: set(), accumulate_block=lambda acc, t: acc | set(t.column("s").drop_null().to_pylist()),
        merge=lambda a, b: a | b, finalize=sorted, name="strings")
    spread = AggregateFn(  # (min, max) of the non-null values, row by row; init sees the key
        init=lambda key: (key, np.inf, -np.inf),
        accumulate_row=lambda acc, row: acc if row["x"] is None else (acc[0], min(acc[1], row["x"]), max(acc[2], row["x"])),
        merge=lambda a, b: (a[0], min(a[1], b[1]), max(a[2], b[2])),
        finalize=lambda acc: {"key": acc[0], "range": float(acc[2] - acc[1]) if acc[2] >= acc[1] else None},
        name="spread")
    g = frame.groupby("k", dropna=False)
    want_range = (g.x.max() - g.x.min()).sort_index(na_position="last")
    want_strings = g.s.agg(lambda s: sorted(s.dropna().unique())).sort_index(na_position="last")
    for target_rows in (200_000, 2):
        with block_rows(target_rows):
            got = blocks_of(frame).groupby("k").aggregate(strings, Mean("x"), spread).to_pandas()
        assert list(got.columns) == ["k", "strings", "mean(x)", "spread"]
        assert [list(v) for v in got.strings] == want_strings.tolist()
        np.testing.assert_allclose(got["mean(x)"], g.x.mean().sort_index(na_position="last"), rtol=1e-9)
        assert [d["key"] for d in got.spread[:-1]] == got.k[:-1].tolist()  # null key last: init(None)
        assert got.spread.iloc[-1]["key"] is None
        np.testing.assert_allclose([d["range"] if d["range"] is not None else np.nan for d in got.spread],
                                   want_range.to_numpy(), rtol=1e-9)
    everything = blocks_of(frame).aggregate(strings, Count())
    assert everything == {"strings": ["a", "b", "c"], "count()": len(frame)}
    assert rd.from_items([]).aggregate(prod) == {"prod": None}  # as the built-ins: None over no rows
    assert rd.from_items([]).groupby("k").aggregate(prod).take_all() == []
    for kwargs, match in [(dict(accumulate_row=len, accumulate_block=len), "exactly one of accumulate_row"),
                          (dict(accumulate_row=len, name=""), "name the aggregation"),
                          (dict(accumulate_row=3), "accumulate_row must be a function")]:
        with pytest.raises((ValueError, TypeError), match=match):
            AggregateFn(init=list, merge=list.__add__, **{"name": "n", **kwargs})


class AbsMax(AggregateFnV2):
    """As Ray's own AbsMax, written against pyarrow: the block is a pyarrow.Table."""

    def __init__(self, on: str, ignore_nulls: bool = True) -> None:
        super().__init__(f"abs_max({on})", zero_factory=lambda: 0, on=on, ignore_nulls=ignore_nulls)

    def aggregate_block(self, block):
        import pyarrow.compute as pc
        col = block.column(self.get_target_column())
        if col.null_count and not self._ignore_nulls:
            return None
        return pc.max(pc.abs(col)).as_py()  # None when every value is null

    def combine(self, current_accumulator, new):
        return max(current_accumulator, new)

    def finalize(self, accumulator):
        return float(accumulator)


def test_aggregate_fn_v2_subclass_as_in_ray(shared_runtime, frame):
    df = frame.assign(x=frame.x - 1e6)  # negative values too
    g = df.groupby("k", dropna=False).x
    want = g.apply(lambda v: v.abs().max()).sort_index(na_position="last").to_numpy()
    has_null = g.apply(lambda v: v.isna().any()).sort_index(na_position="last").to_numpy()
    with block_rows(2):
        got = blocks_of(df).groupby("k").aggregate(AbsMax("x"), Count()).to_pandas()
        strict = blocks_of(df).groupby("k").aggregate(AbsMax("x", ignore_nulls=False)).to_pandas()
    assert list(got.columns) == ["k", "abs_max(x)", "count()"] and AbsMax("x").get_agg_name() == "abs_max"
    np.testing.assert_allclose(got["abs_max(x)"].to_numpy(dtype=float), want, rtol=1e-12)  # k == 5: all null
    assert strict["abs_max(x)"].isna().to_numpy().tolist() == has_null.tolist()
    assert blocks_of(df).aggregate(AbsMax("x")) == {"abs_max(x)": pytest.approx(df.x.abs().max())}
    with pytest.raises(ValueError, match="name must be a non-empty string"):
        AggregateFnV2("", zero_factory=int, on="x", ignore_nulls=True)


def test_map_groups(shared_runtime, frame):
    def summary(df):
        return pd.DataFrame({"k": [df.k.iloc[0]], "n": [len(df)], "xs": [df.x.sum()]})
    with block_rows(2):
        got = blocks_of(frame).groupby("k").map_groups(summary).to_pandas()
    g = frame.groupby("k", dropna=False)
    want = pd.DataFrame({"n": g.size(), "xs": g.x.sum()}).reset_index()
    pd.testing.assert_frame_equal(got, want, check_dtype=False)
    whole = blocks_of(frame).groupby(None).map_groups(lambda b: {"n": [len(b["i"])]}, batch_format="numpy")
    assert whole.take_all() == [{"n": len(frame)}]


# -- random_shuffle, repartition ------------------------------------------------------------

def test_random_shuffle(shared_runtime):
    ds = rd.range(5000, override_num_blocks=5)
    first = [r["id"] for r in ds.random_shuffle(seed=3).take_all()]
    assert sorted(first) == list(range(5000)) and first != list(range(5000))
    assert [r["id"] for r in ds.random_shuffle(seed=3).take_all()] == first  # a seed: the same order
    assert [r["id"] for r in ds.random_shuffle(seed=4).take_all()] != first
    assert [r["id"] for r in ds.random_shuffle().take_all()] != [r["id"] for r in ds.random_shuffle().take_all()]
    assert num_blocks(ds.random_shuffle()) == 5 and num_blocks(ds.random_shuffle(num_blocks=2)) == 2


def test_repartition(shared_runtime):
    ds = rd.range(1003, override_num_blocks=4).map(lambda r: {"id": r["id"], "sq": r["id"] ** 2})
    sizes = [runtime.get(ref).num_rows for ref in ds.repartition(7).to_arrow_refs()]
    assert len(sizes) == 7 and sum(sizes) == 1003 and max(sizes) - min(sizes) <= 1
    assert ds.repartition(7).to_pandas().equals(ds.to_pandas())  # rows in order
    assert num_blocks(rd.range(3).repartition(10)) == 10 and rd.range(3).repartition(10).count() == 3
    shuffled = ds.repartition(2, shuffle=True)
    assert num_blocks(shuffled) == 2
    ids = [r["id"] for r in shuffled.take_all()]
    assert sorted(ids) == list(range(1003)) and ids != list(range(1003))


# -- zip, split_at_indices -------------------------------------------------------------------

def test_zip(shared_runtime, frame):
    left = rd.range(len(frame), override_num_blocks=3)
    right = blocks_of(frame[["x", "i"]].rename(columns={"i": "id"}), 1700)  # other block boundaries
    got = left.zip(right).to_pandas()
    assert list(got.columns) == ["id", "x", "id_1"]  # a taken name gets _1, as in Ray
    assert got.id.tolist() == list(range(len(frame)))
    pd.testing.assert_series_equal(got.x, frame.x.reset_index(drop=True))
    assert got.id_1.tolist() == frame.i.tolist()
    with pytest.raises(ValueError, match=r"different numbers of rows \(6000 and 5999\)"):
        left.zip(rd.range(5999)).count()


def test_split_at_indices(shared_runtime):
    ds = rd.range(100, override_num_blocks=3)
    indices = [10, 10, 55, 200]
    parts = ds.split_at_indices(indices)
    want = np.split(np.arange(100), indices)
    assert [[r["id"] for r in p.take_all()] for p in parts] == [w.tolist() for w in want]
    assert [p.count() for p in ds.map(lambda r: {"v": r["id"]}).split_at_indices([0, 99])] == [0, 99, 1]


# -- empty data, laziness, a chain -----------------------------------------------------------

def test_every_operator_on_empty_datasets(shared_runtime, frame):
    for empty in (rd.from_items([]), rd.from_pandas(frame.iloc[:0])):  # no columns / typed columns
        assert empty.sort("k").take_all() == []
        assert empty.groupby("k").count().take_all() == []
        assert empty.groupby("k").map_groups(lambda g: g).take_all() == []
        assert empty.random_shuffle(seed=1).take_all() == []
        assert num_blocks(empty.repartition(3)) == 3 and empty.repartition(3).count() == 0
        assert empty.zip(empty).count() == 0
        assert [p.count() for p in empty.split_at_indices([0, 2])] == [0, 0, 0]
        assert empty.aggregate(Count(), Sum("x")) == {"count()": 0, "sum(x)": None}
    assert rd.from_pandas(frame.iloc[:0]).sort("k").columns() == list(frame.columns)


def test_operators_are_lazy(shared_runtime, tmp_path):
    marker = tmp_path / "ran"

    def touch(df):
        marker.touch()
        return df
    ds = rd.range(100, override_num_blocks=2).map_batches(touch)
    lazy = [ds.sort("id"), ds.groupby("id").count(), ds.random_shuffle(), ds.repartition(3), ds.zip(ds),
            *ds.split_at_indices([5]), ds.groupby("id").map_groups(lambda g: g)]
    assert not marker.exists(), "an all-to-all operator ran before the dataset was consumed"
    assert all(d.count() == 100 for d in lazy[:5]) and marker.exists()


def test_read_parquet_map_batches_groupby_sort_chain(shared_runtime, frame, tmp_path):
    for i in range(3):
        frame.iloc[i * 2000:(i + 1) * 2000].to_parquet(tmp_path / f"part-{i}.parquet")
    got = (rd.read_parquet(str(tmp_path)).map_batches(lambda df: df.assign(v=df.x * 2))
           .groupby("s").aggregate(Count(), Mean("v")).sort("mean(v)", descending=True).to_pandas())
    g = frame.assign(v=frame.x * 2).groupby("s", dropna=False).v
    want = pd.DataFrame({"count()": g.size(), "mean(v)": g.mean()}).reset_index()
    want = want.sort_values("mean(v)", ascending=False).reset_index(drop=True)
    pd.testing.assert_frame_equal(got, want, check_dtype=False, rtol=1e-12)


# -- bad input -------------------------------------------------------------------------------

def test_bad_input_is_named(shared_runtime):
    ds = rd.range(10)
    with pytest.raises(KeyError, match=r"sort: no column 'nope'; the columns are \['id'\]"):
        ds.sort("nope").take_all()
    with pytest.raises(KeyError, match="groupby: no column 'nope'"):
        ds.groupby("nope").count().take_all()
    with pytest.raises(KeyError, match=r"groupby: no column 'zz'; the columns are \['id'\]"):
        ds.groupby("id").sum("zz").take_all()
    for bad, match in [(lambda: ds.repartition(0), "num_blocks must be a positive int"),
                       (lambda: ds.split_at_indices([5, 2]), "indices must be sorted"),
                       (lambda: ds.split_at_indices([-1]), "indices must be non-negative"),
                       (lambda: ds.split_at_indices([]), "a non-empty list of ints"),
                       (lambda: ds.sort("id", descending=[True, False]), "a list of 1 bools"),
                       (lambda: ds.sort([]), "a column name or a non-empty list"),
                       (lambda: ds.random_shuffle(seed=-1), "seed must be None or a non-negative int"),
                       (lambda: ds.groupby("id").sum(None), "name the column")]:
        with pytest.raises(ValueError, match=match):
            bad()
    with pytest.raises(TypeError, match="pass one or more aggregations"):
        ds.groupby("id").aggregate("count")


# -- larger than the object store ------------------------------------------------------------

@pytest.fixture
def small_store(orrery_leak_check):
    from runtime._testing.pytest_plugin import start_runtime
    with start_runtime(num_cpus=2, object_store_memory=100 * 1024 * 1024) as ctx:
        yield ctx


def test_groupby_and_sort_larger_than_the_object_store(small_store):
    n = 20_000_000  # 320 MB through a 100 MB store: partial aggregates stream, nothing is held
    rows = rd.range(n, override_num_blocks=40).map_batches(
        lambda b: {"k": b["id"] % 1000, "id": b["id"]}, batch_format="numpy", batch_size=None
    ).groupby("k").sum("id").take_all()
    assert len(rows) == 1000 and rows[7] == {"k": 7, "sum(id)": sum(range(7, n, 1000))}

    def random_column(b):
        return {"id": b["id"], "r": np.random.default_rng(int(b["id"][0])).random(len(b["id"]))}
    n = 8_000_000  # 128 MB sorted with a 100 MB store: the exchange spills
    ds = rd.range(n, override_num_blocks=16).map_batches(random_column, batch_format="numpy", batch_size=None)
    last, count = -1.0, 0
    for blk in ds.sort("r").iter_batches(batch_size=None, batch_format="numpy"):
        r = blk["r"]
        assert len(r) == 0 or (r[0] >= last and (np.diff(r) >= 0).all())
        last, count = (r[-1] if len(r) else last), count + len(r)
    assert count == n
