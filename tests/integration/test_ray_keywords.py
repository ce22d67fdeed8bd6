"""What the keywords of Ray's signatures do here (tests/unit/test_ray_signatures.py checks that
they are accepted): Ray Data's task options, readers' and writers' file arguments, iteration
options, init(labels=...) with placement-group label selectors, the state API's parameters."""

from __future__ import annotations

import json
import sys

import cloudpickle
import pyarrow as pa
import pyarrow.fs as pafs
import pytest

import runtime
import runtime.data as rd
from runtime.util import placement_group, placement_group_table, remove_placement_group, state

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this test module


def _assigned(batch):
    resources = runtime.get_runtime_context().get_assigned_resources()
    return {"id": batch["id"], "cpu": [resources.get("CPU", 0.0)] * len(batch["id"])}


def test_operator_task_options_reach_the_fused_task(shared_runtime):
    out = rd.range(4).map_batches(_assigned, num_cpus=0.5).take_all()
    assert {r["cpu"] for r in out} == {0.5}
    # the largest demand of the fused operators wins; ray_remote_args_fn is called per task
    ds = rd.range(4).map(lambda r: r, num_cpus=0.25).map_batches(_assigned, ray_remote_args_fn=lambda: {"num_cpus": 1})
    assert {r["cpu"] for r in ds.take_all()} == {1.0}


class AddOffset:
    def __init__(self, offset):
        self.offset = offset

    def __call__(self, row, scale):
        return {"id": row["id"] * scale + self.offset}


def test_map_filter_flat_map_take_fn_args_classes_and_expressions(shared_runtime):
    ds = rd.range(5)
    assert [r["id"] for r in ds.map(AddOffset, fn_constructor_args=(100,), fn_args=(2,)).take_all()] == \
        [100, 102, 104, 106, 108]
    assert [r["id"] for r in ds.filter(expr="id >= 3").take_all()] == [3, 4]
    assert [r["id"] for r in ds.filter(lambda r, k: r["id"] % k == 0, fn_args=(2,)).take_all()] == [0, 2, 4]
    assert ds.flat_map(lambda r, n: [r] * n, fn_kwargs={"n": 3}).count() == 15
    with pytest.raises(ValueError, match="either fn .* or expr"):
        ds.filter()
    with pytest.raises(ValueError, match="map_batches with a callable class"):
        ds.map(AddOffset, compute=rd.ActorPoolStrategy(size=1))


def test_iteration_and_limits_as_ray(shared_runtime):
    ds = rd.range(10, override_num_blocks=3)
    assert [len(b["id"]) for b in ds.iter_batches(batch_size=4, drop_last=True)] == [4, 4]
    shuffled = [x for b in ds.iter_batches(batch_size=5, local_shuffle_buffer_size=10, local_shuffle_seed=1)
                for x in b["id"]]
    assert sorted(shuffled) == list(range(10)) and shuffled != list(range(10))
    assert [b for b in ds.iter_batches(batch_size=None, _collate_fn=lambda b: len(b["id"]))] == [3, 3, 4]
    assert ds.take_all(limit=10)[-1] == {"id": 9}
    with pytest.raises(ValueError, match="more than the given limit of 5 rows"):
        ds.take_all(limit=5)
    with pytest.raises(ValueError, match="more than the given limit of 5 rows"):
        ds.to_pandas(limit=5)
    assert ds.limit(limit=2).count() == 2 and ds.schema(fetch_if_missing=True).names == ["id"]
    assert [p.count() for p in ds.repartition(target_num_rows_per_block=4).split(3)] == [4, 3, 3]
    assert ds.repartition(target_num_rows_per_block=4).materialize()._sources.__len__() == 3
    three = ds.zip(ds.map(lambda r: {"b": r["id"] + 1}), ds.map(lambda r: {"c": -r["id"]}))
    assert three.take(1) == [{"id": 0, "b": 1, "c": 0}]
    assert len(rd.from_arrow(pa.table({"x": list(range(7))}), override_num_blocks=3)._sources) == 3
    assert rd.from_items([1, 2, 3], parallelism=3).count() == 3


def test_readers_and_writers_take_rays_file_arguments(shared_runtime, tmp_path):
    ds = rd.from_items([{"k": "a" if i % 2 else "b", "v": i} for i in range(6)])
    out = tmp_path / "pq"
    ds.write_parquet(str(out), partition_cols=["k"])
    assert sorted(p.name for p in out.iterdir()) == ["k=a", "k=b"]
    back = rd.read_parquet(str(out)).take_all()  # hive partitions come back as columns, as Ray's
    assert sorted((r["k"], r["v"]) for r in back) == sorted(("a" if i % 2 else "b", i) for i in range(6))
    assert "k" not in rd.read_parquet(str(out), partitioning=None).schema().names
    with pytest.raises(FileExistsError, match="mode='create'"):
        ds.write_parquet(str(out), mode="create")
    ds.write_parquet(str(out), mode="overwrite")
    assert sorted(p.name for p in out.iterdir()) == ["part-00000.parquet"]

    csv_dir = tmp_path / "csv"
    ds.write_csv(str(csv_dir), filesystem=pafs.LocalFileSystem())
    (csv_dir / "notes.txt").write_text("not data")
    rows = rd.read_csv(str(csv_dir), include_paths=True, file_extensions=["csv"]).take_all()
    assert len(rows) == 6 and rows[0]["path"].endswith("part-00000.csv")
    both = rd.read_csv([str(csv_dir), str(tmp_path / "missing.csv")], ignore_missing_paths=True, num_cpus=0.5)
    assert both.count() == 6
    with pytest.raises(FileNotFoundError, match="ignore_missing_paths=True skips it"):
        rd.read_csv(str(tmp_path / "missing.csv"))

    array_file = tmp_path / "records.json"  # one JSON array, as pandas writes with orient="records"
    array_file.write_text(json.dumps([{"a": 1}, {"a": 2}]))
    assert rd.read_json(str(array_file), lines=False).take_all() == [{"a": 1}, {"a": 2}]


@pytest.mark.parametrize("ray_start", [{"num_cpus": 2, "labels": {"zone": "a"}}], indirect=True)
def test_init_labels_and_bundle_label_selectors(ray_start):
    assert state.list_nodes()[0]["labels"] == {"zone": "a"}
    here = placement_group([{"CPU": 1}], bundle_label_selector=[{"zone": "in(a,b)"}])
    assert here.wait(10)
    nowhere = placement_group([{"CPU": 1}], bundle_label_selector=[{"zone": "!a"}])
    assert not nowhere.wait(1)
    assert "with the labels it selects" in placement_group_table(nowhere)["pending_reason"]
    remove_placement_group(here)
    remove_placement_group(nowhere)
    with pytest.raises(ValueError, match="one per bundle"):
        placement_group([{"CPU": 1}], bundle_label_selector=[{"zone": "a"}, {"zone": "b"}])


def test_state_api_takes_rays_parameters_in_rays_order(shared_runtime):
    @runtime.remote
    class Marker:
        def ping(self):
            return 1

    m = Marker.options(name="state-marker").remote()
    runtime.get(m.ping.remote())
    rows = state.list_actors(None, [("name", "=", "state-marker")], 10, 30, True)  # address, filters, limit, ...
    assert [r["name"] for r in rows] == ["state-marker"]
    assert state.list_actors(filters=[("name", "=", "state-marker")], timeout=5, raise_on_missing_output=False)
    assert "Marker.ping" in state.summarize_tasks(timeout=10) or state.summarize_tasks()
    runtime.kill(m)
