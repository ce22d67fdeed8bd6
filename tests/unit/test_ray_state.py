"""Ray's state API rows: our columns are Ray 2.60's (the checked-in dump of Ray's schemas), and
its filters and log picking behave as Ray's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runtime._core import ray_state
from runtime.node import logs

RAY = json.loads((Path(__file__).resolve().parents[1] / "data" / "ray_signatures.json").read_text())


@pytest.mark.parametrize("resource", ray_state.RESOURCES)
def test_columns_are_rays(resource):
    assert ray_state.SCHEMAS[resource] == RAY["state_schemas"][resource]


def test_filters_as_rays_server():
    assert ray_state._matches("RUNNING", "=", "running")  # strings: case-insensitive
    assert ray_state._matches(True, "=", "true") and ray_state._matches(False, "!=", "True")
    assert ray_state._matches(42, "=", "42") and not ray_state._matches(42, "=", "x")
    assert ray_state.check_filters("tasks", [("STATE", "=", "FAILED")]) == [("state", "=", "FAILED")]
    with pytest.raises(ValueError, match="The given filter column bogus is not supported"):
        ray_state.check_filters("tasks", [("bogus", "=", "1")])
    with pytest.raises(ValueError, match="Unsupported filter predicate"):
        ray_state.check_filters("tasks", [("state", ">", "1")])


def test_shaped_rows_have_every_column():
    task = ray_state._task({"task_id": "t1", "name": "f", "state": "CANCELLED", "job_id": "01",
                            "error_type": "TaskCancelledError", "error_message": "cancelled",
                            "creation_time": 1.0, "start_time": 2.0, "end_time": 3.0})
    schema = ray_state.SCHEMAS["tasks"]
    assert set(task) == set(schema["columns"] + schema["detail_columns"])
    assert (task["state"], task["error_type"], task["error_message"]) == ("FAILED", "TASK_CANCELLED",
                                                                          "TaskCancelledError: cancelled")
    assert [e["state"] for e in task["events"]] == ["PENDING_NODE_ASSIGNMENT", "RUNNING", "FAILED"]


def test_a_tasks_lines_are_picked_out_of_its_workers_file(tmp_path):
    (tmp_path / "worker-w.out").write_text(":task_id:aa\nfirst of a\n:task_id:bb\nof b\n:task_id:aa\nsecond of a\n")
    assert logs.read_log(str(tmp_path), "worker-w.out", task_id="aa")["text"] == "first of a\nsecond of a\n"
    assert logs.read_log(str(tmp_path), "worker-w.out")["text"] == "first of a\nof b\nsecond of a\n"
    assert logs.read_log(str(tmp_path), "worker-w.out", lines=1)["text"] == "second of a\n"
    follow = logs.read_log(str(tmp_path), "worker-w.out", offset=0)
    assert follow["offset"] == follow["size"] and follow["text"].startswith(":task_id:aa")
    for bad in ("../token", "/etc/passwd", ".hidden", "a/b"):
        with pytest.raises(ValueError, match="is not a log file name"):
            logs.read_log(str(tmp_path), bad)
    with pytest.raises(FileNotFoundError):
        logs.read_log(str(tmp_path), "nope.log")


def test_timeline_is_chrome_trace_rows_per_worker():
    rows = [{"task_id": "a", "name": "f", "state": "FINISHED", "node_id": "n1", "worker_id": "w1",
             "start_time": 10.0, "end_time": 10.5},
            {"task_id": "b", "name": "g", "state": "RUNNING", "node_id": "n1", "worker_id": "w2", "start_time": 11.0},
            {"task_id": "c", "name": "h", "state": "PENDING", "node_id": None, "worker_id": None}]
    events = ray_state.timeline(rows, now=12.0)
    spans = {e["name"]: e for e in events if e["ph"] == "X"}
    assert set(spans) == {"f", "g"}  # a task that has not started has no span
    assert spans["f"]["ts"] == 10e6 and spans["f"]["dur"] == 0.5e6 and spans["g"]["dur"] == 1e6
    assert spans["f"]["tid"] != spans["g"]["tid"] and spans["f"]["pid"] == spans["g"]["pid"]
    assert {e["name"] for e in events if e["ph"] == "M"} == {"thread_name", "process_name"}
