"""runtime.data, the remaining parts: map_batches on an actor pool (against the task path),
to_dask / from_dask (against pandas and Dask's synchronous scheduler), the progress text,
union's schema check, and columns of Python objects Arrow cannot hold."""

from __future__ import annotations

import contextlib
import os
import sys
import time

import cloudpickle
import numpy as np
import pandas as pd
import pytest

import runtime
import runtime.data as rd
from runtime._testing.sync import wait_for, wait_for_path
from runtime.data import DataContext
from runtime.util import state

dask = pytest.importorskip("dask")
dd = pytest.importorskip("dask.dataframe")

pytestmark = pytest.mark.slow

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import the tests' modules


class Scale:
    """A callable class: the constructor argument is used, and each instance tags its rows
    with its process id, so the test can tell how many actors did the work."""

    def __init__(self, k: int) -> None:
        self.k = k
        self.pid = os.getpid()

    def __call__(self, df: pd.DataFrame) -> pd.DataFrame:
        return df.assign(y=df["id"] * self.k, pid=self.pid)


class FailOn:
    def __call__(self, df: pd.DataFrame) -> pd.DataFrame:
        if (df["id"] == 7).any():
            raise ValueError("bad block with id 7")
        return df


def pool_actors_dead() -> bool:
    return all(a["state"] == "DEAD" for a in state.list_actors() if a["class_name"] == "_MapWorker")


def wait_pool_gone() -> None:
    wait_for(pool_actors_dead, timeout=30, what="every pool actor is DEAD")


def test_actor_pool_matches_the_task_path_and_grows_to_max_size(shared_runtime):
    ds = rd.range(4000, override_num_blocks=8)
    by_tasks = ds.map_batches(Scale, fn_constructor_args=(3,), batch_size=500).to_pandas()
    pooled = ds.map_batches(Scale, fn_constructor_kwargs={"k": 3}, batch_size=500,
                            compute=rd.ActorPoolStrategy(min_size=1, max_size=2))
    assert "MapBatches(Scale)" in repr(pooled) and "num_blocks=8" in repr(pooled)
    got = pooled.to_pandas()
    pd.testing.assert_frame_equal(got.drop(columns="pid"), by_tasks.drop(columns="pid"))  # order kept
    assert (got.y == got.id * 3).all()
    assert got.pid.nunique() == 2  # a block waited while the first actor was busy: the pool grew
    assert os.getpid() not in set(got.pid)
    wait_pool_gone()

    # Operators after the stage are fused into tasks; concurrency=(min, max) is Ray's other spelling.
    after = pooled.filter(lambda r: r["id"] % 3 == 0).map_batches(lambda df: df.assign(z=df.y + 1))
    want = by_tasks[by_tasks.id % 3 == 0].assign(z=lambda d: d.y + 1).reset_index(drop=True)
    pd.testing.assert_frame_equal(after.to_pandas().drop(columns="pid"), want.drop(columns="pid"))
    wait_pool_gone()
    again = ds.map_batches(Scale, fn_constructor_args=(2,), concurrency=(1, 2)).map(lambda r: {"y": r["y"]})
    assert again.sum("y") == 2 * sum(range(4000))
    wait_pool_gone()


class SlowLast:
    """Holds the last block until the test creates the file `release` (at most 60 s)."""

    def __init__(self, release: str, last: int) -> None:
        self.release, self.last = release, last

    def __call__(self, df: pd.DataFrame) -> pd.DataFrame:
        if (df["id"] == self.last).any():
            wait_for_path(self.release)
        return df.assign(pid=os.getpid())


def test_actor_pool_shrinks_once_the_last_block_is_handed_out(shared_runtime, tmp_path):
    """Two actors; the last block is held back. The other actor, with nothing left to do, is
    killed while that block is still running, not when the stream ends."""
    import threading
    release = tmp_path / "release"
    seen_dead = threading.Event()
    earlier = {a["actor_id"] for a in state.list_actors() if a["class_name"] == "_MapWorker"}

    def one_of_ours_dead() -> bool:
        return any(a["state"] == "DEAD" for a in state.list_actors()
                   if a["class_name"] == "_MapWorker" and a["actor_id"] not in earlier)

    def watch() -> None:
        with contextlib.suppress(AssertionError):  # wait_for's timeout: seen_dead stays unset
            wait_for(one_of_ours_dead, timeout=30, what="a pool actor killed while the last block runs")
            seen_dead.set()
        release.touch()

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        got = rd.range(800, override_num_blocks=8).map_batches(
            SlowLast, fn_constructor_args=(str(release), 799), batch_size=None,
            compute=rd.ActorPoolStrategy(size=2)).to_pandas()
    finally:
        release.touch()
        watcher.join()
    assert got.id.tolist() == list(range(800)) and got.pid.nunique() == 2  # every block, in order, both actors
    assert seen_dead.is_set(), "the idle actor lived until the last block was done"
    wait_pool_gone()


def test_actor_pool_actors_are_killed_on_early_stop_and_on_error(shared_runtime):
    ds = rd.range(800, override_num_blocks=8)
    rows = ds.map_batches(Scale, fn_constructor_args=(1,), concurrency=2).take(1)
    assert rows[0]["id"] == 0 and rows[0]["y"] == 0
    wait_pool_gone()
    with pytest.raises(ValueError, match="bad block with id 7"):
        ds.map_batches(FailOn, compute=rd.ActorPoolStrategy(size=1)).to_pandas()
    wait_pool_gone()


def test_actor_pool_bad_arguments_are_named(shared_runtime):
    with pytest.raises(ValueError, match="needs a callable class"):
        rd.range(10).map_batches(lambda df: df, compute=rd.ActorPoolStrategy(size=1))
    with pytest.raises(ValueError, match="concurrency=.*needs a callable class"):
        rd.range(10).map_batches(lambda df: df, concurrency=(1, 2))
    with pytest.raises(ValueError, match="max_size .* is smaller than min_size"):
        rd.ActorPoolStrategy(min_size=3, max_size=2)
    # Two 1-CPU actors on a 2-CPU cluster would leave nothing for the filter's tasks.
    too_big = rd.range(10).map_batches(Scale, fn_constructor_args=(1,), concurrency=2).filter(lambda r: True)
    with pytest.raises(ValueError, match="the actor pool needs at least 2 actors.*but the cluster has 2 CPUs"):
        too_big.count()
    wait_pool_gone()


@pytest.fixture
def frame_with_nulls():
    rng = np.random.default_rng(5)
    n = 5000
    return pd.DataFrame({"k": rng.integers(0, 9, n), "x": np.where(rng.random(n) < 0.2, np.nan, rng.random(n)),
                         "s": np.where(rng.random(n) < 0.3, None, rng.choice(["a", "b"], n)).astype(object)})


def test_to_dask_partitions_are_the_blocks_and_match_pandas(shared_runtime, frame_with_nulls):
    from runtime.util.dask import enable_dask_on_runtime
    frame = frame_with_nulls
    ds = rd.from_pandas([frame.iloc[:2000], frame.iloc[2000:3500], frame.iloc[3500:]])
    ddf = ds.to_dask()
    assert ddf.npartitions == 3
    refs = [v for v in dict(ddf.__dask_graph__()).values() if isinstance(getattr(v, "value", v), runtime.ObjectRef)]
    assert len(refs) == 3  # the graph holds the blocks' refs, not their data
    with enable_dask_on_runtime():
        ours = ddf.compute()
        sums = ddf.groupby("k").x.sum().compute()
    pd.testing.assert_frame_equal(ours.reset_index(drop=True), frame)
    pd.testing.assert_frame_equal(ours.reset_index(drop=True), ddf.compute(scheduler="sync").reset_index(drop=True))
    pd.testing.assert_series_equal(sums.sort_index(), frame.groupby("k").x.sum())
    assert list(ddf.dtypes) == list(ours.dtypes)  # meta from the schema


def test_from_dask_keeps_partitions_in_the_object_store(shared_runtime, frame_with_nulls):
    frame = frame_with_nulls
    ddf = dd.from_pandas(frame, npartitions=4)
    ds = rd.from_dask(ddf[ddf.k > 2])
    assert len(ds._sources) == 4 and all(isinstance(s, runtime.ObjectRef) for s in ds._sources)
    want = frame[frame.k > 2].reset_index(drop=True)
    got = ds.to_pandas()
    pd.testing.assert_frame_equal(got, want, check_dtype=False)  # Dask may make strings string[pyarrow]
    assert got.s.isna().sum() == want.s.isna().sum() and got.x.isna().sum() == want.x.isna().sum()
    assert ds.map_batches(lambda df: df.assign(x2=df.x * 2)).sum("x2") == pytest.approx(2 * want.x.sum())
    round_trip = rd.from_dask(rd.from_pandas(frame).to_dask()).to_pandas()
    pd.testing.assert_frame_equal(round_trip, frame, check_dtype=False)
    with pytest.raises(TypeError, match="from_dask takes a dask.dataframe"):
        rd.from_dask(frame)


@pytest.fixture
def data_context():
    ctx = DataContext.get_current()
    saved = (ctx.enable_progress_bars, ctx.progress_bar_min_seconds)
    yield ctx
    ctx.enable_progress_bars, ctx.progress_bar_min_seconds = saved


def test_progress_text_on_stderr_for_long_work_only(shared_runtime, data_context, capsys, monkeypatch):
    monkeypatch.setenv("KERNEL_EXT_NONINTERACTIVE", "1")

    def slow(batch):
        time.sleep(0.2)  # work made slow on purpose, not a wait for a condition
        return batch

    ds = rd.range(40, override_num_blocks=4).map_batches(slow, batch_size=None)
    data_context.progress_bar_min_seconds = 60.0
    assert ds.count() == 40  # shorter than the threshold: quiet
    assert capsys.readouterr().err == ""
    data_context.progress_bar_min_seconds = 0.0
    assert ds.count() == 40
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("Running Read -> MapBatches(slow): 1/4 blocks, 10 rows, ")
    assert lines[-1].startswith("Done Read -> MapBatches(slow): 4/4 blocks, 40 rows, ") and lines[-1].endswith(" s")
    data_context.enable_progress_bars = False
    assert ds.count() == 40
    assert capsys.readouterr().err == ""


def test_union_schema_mismatch_is_named(shared_runtime):
    ints = rd.from_items([{"a": 1}, {"a": 2}])
    with pytest.raises(TypeError, match=r"(?s)union: the datasets' schemas do not match.*a: int64.*b: string"):
        ints.union(rd.from_items([{"b": "x"}]))  # known schemas: checked at once
    with pytest.raises(TypeError, match=r"(?s)union: .*a: int64.*a: string.*Make the columns agree"):
        ints.union(rd.from_items([{"a": "x"}]))
    import pyarrow as pa
    widened = ints.union(rd.from_arrow(pa.table({"a": pa.array([3], pa.int32())})))
    assert widened.sum("a") == 6  # int32 and int64 widen
    lazy = rd.range(3).union(rd.range(2).map(lambda r: {"id": str(r["id"])}))  # known only when run
    with pytest.raises(TypeError, match=r"(?s)union: .*id: int64.*id: string"):
        lazy.take_all()


class Point:
    def __init__(self, x: int) -> None:
        self.x = x

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Point) and other.x == self.x

    def __hash__(self) -> int:
        return hash(self.x)


def test_python_objects_arrow_cannot_hold_round_trip(shared_runtime):
    items = [{"o": Point(i), "v": i, "mixed": i if i % 2 else f"s{i}"} for i in range(10)]
    ds = rd.from_items(items, override_num_blocks=2)
    schema = ds.schema()
    assert schema.field("o").type.extension_name == "runtime.python_object"
    assert schema.field("v").type.id == __import__("pyarrow").int64().id  # other columns stay native
    assert ds.take_all() == items
    mapped = ds.map(lambda r: {"o": r["o"], "double": r["o"].x * 2})
    assert [r["double"] for r in mapped.take(10)] == [2 * i for i in range(10)]
    assert [r["o"] for r in mapped.take(3)] == [Point(0), Point(1), Point(2)]
    assert ds.filter(lambda r: r["o"].x > 5).count() == 4
    df = ds.to_pandas()
    assert df.o.tolist() == [Point(i) for i in range(10)] and df.mixed.tolist() == [r["mixed"] for r in items]
    shifted = ds.map_batches(lambda b: b.assign(o=[Point(p.x + 1) for p in b["o"]]), batch_format="pandas")
    assert [r["o"] for r in shifted.take_all()] == [Point(i + 1) for i in range(10)]
    as_numpy = ds.map_batches(lambda b: {"o": b["o"], "n": np.array([p.x for p in b["o"]])}, batch_format="numpy")
    assert as_numpy.sum("n") == 45
    assert rd.from_items([Point(1), None]).take_all() == [{"item": Point(1)}, {"item": None}]
