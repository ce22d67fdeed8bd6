"""The state API (`runtime.util.state`) on a real cluster: tasks cluster-wide, cancel by id,
cell tags on tasks, actors and objects."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import cloudpickle
import pytest

import runtime
from runtime._core import worker_state
from runtime._testing.sync import SignalActor, wait_for
from runtime.exceptions import TaskCancelledError
from runtime.util import state

cloudpickle.register_pickle_by_value(sys.modules[__name__])

Signal = runtime.remote(num_cpus=0)(SignalActor)


@runtime.remote
def maybe_fail(x):
    if x == 2:
        raise KeyError(f"no key {x}")
    return x


@runtime.remote
def wait_on(signal):
    runtime.get(signal.wait.remote())
    return "done"


@runtime.remote
def parent_of_child():
    return runtime.get(maybe_fail.remote(1))


def _mine(prefix: str) -> list[dict]:
    return [t for t in state.list_tasks() if t["name"].endswith(prefix)]


def test_list_tasks_reports_finished_and_failed_with_error(shared_runtime):
    refs = [maybe_fail.remote(i) for i in range(4)]
    with pytest.raises(runtime.exceptions.TaskError):
        runtime.get(refs)
    ids = {r.task_id() for r in refs}
    rows = {t["task_id"]: t for t in state.list_tasks() if t["task_id"] in ids}
    assert len(rows) == 4
    failed = [t for t in rows.values() if t["state"] == "FAILED"]
    assert [(t["error_type"], t["error_message"]) for t in failed] == [("KeyError", "'no key 2'")]
    assert sum(t["state"] == "FINISHED" for t in rows.values()) == 3
    assert all(t["end_time"] >= t["creation_time"] for t in rows.values())
    summary = state.summarize_tasks()
    assert summary["maybe_fail"]["FAILED"] >= 1


def test_a_task_is_listed_under_the_name_its_options_give(shared_runtime):
    """`f.options(name=...)` names the task in the state API, as in Ray (it was the function's name)."""
    ref = maybe_fail.options(name="renamed-by-options").remote(1)
    assert runtime.get(ref) == 1
    wait_for(lambda: any(t["task_id"] == ref.task_id() for t in state.list_tasks()), timeout=30)
    [row] = [t for t in state.list_tasks() if t["task_id"] == ref.task_id()]
    assert row["name"] == "renamed-by-options" and row["func_or_class_name"] == "renamed-by-options"


def test_an_actor_call_is_listed_under_the_name_its_options_give(shared_runtime):
    signal = Signal.remote()
    ref = signal.send.options(name="renamed-call").remote()
    runtime.get(ref)
    wait_for(lambda: any(t["task_id"] == ref.task_id() for t in state.list_tasks()), timeout=30)
    [row] = [t for t in state.list_tasks() if t["task_id"] == ref.task_id()]
    assert row["name"] == "renamed-call" and row["type"] == "ACTOR_TASK"


def test_child_tasks_are_reported_by_their_worker_with_the_parent_id(shared_runtime):
    ref = parent_of_child.remote()
    assert runtime.get(ref) == 1
    parent_id = ref.task_id()
    child = wait_for(lambda: [t for t in state.list_tasks() if t["parent_task_id"] == parent_id
                              and t["state"] == "FINISHED"], timeout=10, what="the child task's row")
    assert child[0]["name"].endswith("maybe_fail")


def test_cancel_task_by_id_from_another_driver(shared_runtime):
    signal = Signal.remote()
    ref = wait_on.remote(signal)
    tid = ref.task_id()
    wait_for(lambda: (state.get_task(tid) or {}).get("state") == "RUNNING", timeout=10, what="task running")
    address = runtime.get_runtime_context().gcs_address
    code = textwrap.dedent(f"""
        import runtime
        from runtime.util import state
        runtime.init(address={address!r})
        print(state.cancel_task({tid!r}))
        runtime.shutdown()
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "True", out.stderr
    with pytest.raises(TaskCancelledError):
        runtime.get(ref, timeout=10)
    wait_for(lambda: state.get_task(tid)["state"] == "CANCELLED", timeout=10, what="CANCELLED in the table")
    runtime.kill(signal)


def test_cancel_unknown_task_says_what_to_do(shared_runtime):
    with pytest.raises(Exception, match="No task with id .*list_tasks"):
        state.cancel_task("ab" * 16)


def test_cell_tag_goes_on_tasks_children_actors_and_objects(shared_runtime):
    cw = worker_state.current()
    cell = {"notebook": "t.ipynb", "cell_id": "cell-7", "execution_count": 7}
    cw.current_cell = cell
    try:
        ref = parent_of_child.remote()
        obj = runtime.put(b"x" * 10)
        actor = Signal.remote()
    finally:
        cw.current_cell = None
    untagged = maybe_fail.remote(0)
    runtime.get([ref, untagged, actor.is_set.remote()])

    def finished_in_cell():
        rows = state.list_tasks(filters=[("cell_id", "=", "cell-7")])
        return rows if len(rows) == 2 and all(t["state"] == "FINISHED" for t in rows) else None

    tagged = wait_for(finished_in_cell, timeout=10, what="the cell's task and its child, finished")
    assert {t["name"].rsplit(".", 1)[-1] for t in tagged} == {"parent_of_child", "maybe_fail"}
    assert tagged[0]["cell"] == cell
    assert state.get_task(untagged.task_id())["cell"] is None
    actors = state.list_actors(filters=[("cell_id", "=", "cell-7")])
    assert [a["class_name"] for a in actors] == ["SignalActor"]
    objects = [o for o in state.list_objects() if o["object_id"] == obj.hex()]
    assert objects and objects[0]["cell"] == cell
    runtime.kill(actor)
