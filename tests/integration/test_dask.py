"""Dask graphs run as runtime tasks (runtime.util.dask), compared with Dask's synchronous
scheduler on the same data: delayed, array, dataframe (groupby, merge, shuffle), bag; persist
keeps partitions in the object store; enable/disable switch the default scheduler."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import runtime
from runtime.util.dask import disable_dask_on_runtime, enable_dask_on_runtime, ray_dask_get, runtime_dask_get

dask = pytest.importorskip("dask")
dd = pytest.importorskip("dask.dataframe")
da = pytest.importorskip("dask.array")
db = pytest.importorskip("dask.bag")

pytestmark = pytest.mark.slow


def both(collection):
    """(ours, Dask's synchronous scheduler's) result of one collection."""
    return collection.compute(scheduler=runtime_dask_get), collection.compute(scheduler="sync")


@pytest.fixture
def frame():
    rng = np.random.default_rng(7)
    n = 200_000
    return pd.DataFrame({"k": rng.integers(0, 50, n), "x": rng.random(n), "s": rng.choice(["a", "b", None], n),
                         "y": np.where(rng.random(n) < 0.1, np.nan, rng.random(n))})


def test_delayed_graph_with_shared_dependencies(shared_runtime):
    @dask.delayed
    def inc(x):
        return x + 1

    @dask.delayed
    def add(a, b):
        return a + b

    a = inc(1)
    total = add(add(a, inc(a)), np.arange(1_000_000).sum())  # a is used twice; a big literal
    ours, sync = both(total)
    assert ours == sync == 2 + 3 + 499999500000


def test_array_reductions_and_matmul(shared_runtime):
    x = da.random.default_rng(3).random((2000, 2000), chunks=(500, 500))
    ours, sync = both((x @ x.T).sum(axis=0)[:10] + x.mean())
    np.testing.assert_allclose(ours, sync)


def test_dataframe_groupby_merge_and_shuffle_match_pandas(shared_runtime, frame):
    ddf = dd.from_pandas(frame, npartitions=8)
    ours, sync = both(ddf.groupby("k").agg({"x": ["mean", "max"], "y": "sum"}))
    pd.testing.assert_frame_equal(ours.sort_index(), sync.sort_index())
    pd.testing.assert_frame_equal(ours.sort_index(), frame.groupby("k").agg({"x": ["mean", "max"], "y": "sum"}))
    right = dd.from_pandas(pd.DataFrame({"k": range(50), "name": [f"n{i}" for i in range(50)]}), npartitions=2)
    ours, sync = both(ddf.merge(right, on="k").groupby("name").x.count())
    pd.testing.assert_series_equal(ours.sort_index(), sync.sort_index())
    ours, sync = both(ddf.shuffle("k").map_partitions(len))
    assert ours.sum() == sync.sum() == len(frame)
    ours, sync = both(ddf.s.value_counts(dropna=False))
    pd.testing.assert_series_equal(ours.sort_index(), sync.sort_index())


def test_bag_fold_and_frequencies(shared_runtime):
    b = db.from_sequence(range(10_000), npartitions=7)
    ours, sync = both(b.map(lambda v: v % 13).frequencies())
    assert sorted(ours) == sorted(sync)
    ours, sync = both(b.filter(lambda v: v % 3 == 0).sum())
    assert ours == sync


def test_persist_keeps_partitions_in_the_object_store(shared_runtime, frame):
    ddf = dd.from_pandas(frame, npartitions=4)
    (kept,) = dask.persist(ddf[ddf.x > 0.5], scheduler=runtime_dask_get, runtime_persist=True)
    graph = dict(kept.__dask_graph__())
    refs = [v for v in graph.values() if isinstance(v, runtime.ObjectRef)
            or isinstance(getattr(v, "value", None), runtime.ObjectRef)]
    assert len(refs) == 4  # each partition is an ObjectRef in the graph, not data in the driver
    expected = frame[frame.x > 0.5].groupby("k").x.sum()
    pd.testing.assert_series_equal(kept.groupby("k").x.sum().compute(scheduler=runtime_dask_get).sort_index(),
                                   expected.sort_index())
    (kept_ray,) = dask.persist(ddf, scheduler=ray_dask_get, ray_persist=True)  # Ray's spelling
    assert len(kept_ray.compute(scheduler=ray_dask_get)) == len(frame)


def test_enable_and_disable_switch_the_default_scheduler(shared_runtime, frame):
    ddf = dd.from_pandas(frame, npartitions=4)
    calls = []

    def spy(dsk, keys, **kw):
        calls.append(1)
        return runtime_dask_get(dsk, keys, **kw)

    with enable_dask_on_runtime():
        assert dask.config.get("scheduler") is runtime_dask_get
        assert int(ddf.k.sum().compute()) == int(frame.k.sum())
    enable_dask_on_runtime()
    try:
        dask.config.set(scheduler=spy)
        ddf.x.max().compute()
        assert calls
    finally:
        disable_dask_on_runtime()
    assert dask.config.get("scheduler", None) is None


def test_a_failing_task_raises_its_error_in_the_driver(shared_runtime):
    @dask.delayed
    def boom(x):
        raise ValueError(f"bad partition {x}")

    with pytest.raises(ValueError, match="bad partition 3"):
        boom(3).compute(scheduler=runtime_dask_get)


def test_linear_chains_run_as_one_task_and_data_stays_out_of_them(shared_runtime, frame):
    """Fusing, as Dask's process scheduler does: a chain of per-partition steps runs as one task
    per partition, while the partitions stay out of the tasks (put once, passed by reference).
    optimize_graph=False runs every step as its own task; both give Dask's answer."""
    import time

    from runtime.util import state

    ddf = dd.from_pandas(frame, npartitions=4)
    chain = (ddf.x + 1).map_partitions(lambda s: s * 2).map_partitions(lambda s: s - 3).sum()
    expected = chain.compute(scheduler="sync")
    names = {}
    for optimize in (True, False):
        start = time.time()
        got = chain.compute(scheduler=lambda d, k, **kw: runtime_dask_get(d, k, optimize_graph=optimize, **kw))
        assert got == pytest.approx(expected)
        # list_tasks sends this driver's own pending task events first: its tasks are all there.
        names[optimize] = [t["name"] for t in state.list_tasks()
                           if t["name"].startswith("dask:") and t["creation_time"] >= start]
    assert 0 < len(names[True]) < len(names[False]), names
    assert not any("frompandas" in n for n in names[True]), "a partition was fused into a task"
