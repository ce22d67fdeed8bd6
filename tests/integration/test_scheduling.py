"""Scheduling on a real embedded cluster: CPU caps, CPU lending in nested get,
custom resources, GPUs, infeasible requests, cluster introspection, runtime
context and runtime_env."""

from __future__ import annotations

import os
import sys
import time
import uuid

import cloudpickle
import pytest

import runtime
from runtime._testing.sync import wait_for
from runtime.exceptions import GetTimeoutError

cloudpickle.register_pickle_by_value(sys.modules[__name__])


def test_task_without_gpu_sees_no_gpu_ids(shared_runtime):
    @runtime.remote
    def no_gpu():
        return runtime.get_gpu_ids()

    assert runtime.get(no_gpu.remote(), timeout=30) == []


def test_infeasible_request_times_out_in_get(shared_runtime):
    @runtime.remote(num_cpus=64)
    def huge():
        return "ran"

    ref = huge.remote()
    with pytest.raises(GetTimeoutError):
        runtime.get(ref, timeout=1)
    runtime.cancel(ref)


def test_cluster_resources_report_init_values(shared_runtime):
    total = runtime.cluster_resources()
    assert total["CPU"] == 2
    assert total.get("GPU", 0) == 0
    wait_for(lambda: runtime.available_resources().get("CPU") == 2, timeout=10,
             what="all CPUs available on an idle cluster")


def test_available_resources_drop_while_task_runs(shared_runtime, tmp_path):
    release = tmp_path / "release"

    @runtime.remote(num_cpus=1)
    def hold(path):
        deadline = time.monotonic() + 30
        while not os.path.exists(path) and time.monotonic() < deadline:
            time.sleep(0.05)
        return "done"

    ref = hold.remote(str(release))
    wait_for(lambda: runtime.available_resources().get("CPU", 0) == 1, timeout=20,
             what="one CPU in use by the running task")
    release.touch()
    assert runtime.get(ref, timeout=30) == "done"
    wait_for(lambda: runtime.available_resources().get("CPU") == 2, timeout=10,
             what="the CPU returned after the task")


def test_nodes_lists_alive_head_node(shared_runtime):
    nodes = runtime.nodes()
    assert len(nodes) == 1
    node = nodes[0]
    assert node["Alive"] is True
    assert node["Resources"]["CPU"] == 2
    assert node["NodeID"] == runtime.get_runtime_context().get_node_id()


def test_runtime_context_ids_in_driver_task_and_actor(shared_runtime):
    ctx = runtime.get_runtime_context()
    job_id = ctx.get_job_id()
    assert isinstance(job_id, str) and job_id
    assert ctx.get_actor_id() is None

    @runtime.remote
    def task_ids():
        c = runtime.get_runtime_context()
        return c.get_job_id(), c.get_node_id(), c.get_task_id(), c.get_actor_id()

    (j1, n1, t1, a1), (j2, _, t2, _) = runtime.get(
        [task_ids.remote(), task_ids.remote()], timeout=30
    )
    assert j1 == j2 == job_id
    assert n1 == ctx.get_node_id()
    assert t1 and t2 and t1 != t2
    assert a1 is None

    @runtime.remote
    class Who:
        def ids(self):
            c = runtime.get_runtime_context()
            return c.get_actor_id(), c.get_job_id()

    who = Who.remote()
    actor_id, actor_job = runtime.get(who.ids.remote(), timeout=30)
    assert isinstance(actor_id, str) and actor_id
    assert actor_job == job_id
    runtime.kill(who)


@runtime.remote
def read_env(name):
    return os.environ.get(name)


def test_runtime_env_env_vars_apply_only_to_that_task(shared_runtime):
    with_env = read_env.options(runtime_env={"env_vars": {"ORR_TASK_VAR": "task-level"}})
    assert runtime.get(with_env.remote("ORR_TASK_VAR"), timeout=60) == "task-level"
    plain = runtime.get([read_env.remote("ORR_TASK_VAR") for _ in range(4)], timeout=60)
    assert plain == [None] * 4


def test_runtime_env_env_vars_apply_to_actor(shared_runtime):
    @runtime.remote
    class EnvReader:
        def read(self, name):
            return os.environ.get(name)

    reader = EnvReader.options(runtime_env={"env_vars": {"ORR_ACTOR_VAR": "actor"}}).remote()
    assert runtime.get(reader.read.remote("ORR_ACTOR_VAR"), timeout=60) == "actor"
    runtime.kill(reader)


@pytest.mark.parametrize("key", ["conda", "not_a_runtime_env_key"])
def test_runtime_env_unsupported_key_raises_error_naming_key(shared_runtime, key):
    with pytest.raises(Exception) as info:  # noqa: B017 - the type is not specified
        ref = read_env.options(runtime_env={key: ["x"]}).remote("HOME")
        runtime.get(ref, timeout=30)
    assert not isinstance(info.value, GetTimeoutError)
    assert key in str(info.value)


# -- tests with a cluster of their own ------------------------------------------


def _inside_count(directory):
    return len([n for n in os.listdir(directory) if n.startswith("inside-")])


@runtime.remote
def occupy(directory, want_peers, hold_s):
    """Holds a CPU (never calls runtime.get) while recording concurrency.

    Marks itself inside, waits (bounded) until `want_peers` tasks are inside,
    stays a little longer, and returns the most tasks it ever saw inside.
    """
    mine = os.path.join(directory, f"inside-{uuid.uuid4().hex}")
    open(mine, "w").close()
    most = _inside_count(directory)
    deadline = time.monotonic() + 20
    while most < want_peers and time.monotonic() < deadline:
        time.sleep(0.02)
        most = max(most, _inside_count(directory))
    stay_until = time.monotonic() + hold_s
    while time.monotonic() < stay_until:
        time.sleep(0.02)
        most = max(most, _inside_count(directory))
    os.unlink(mine)
    return most


@pytest.mark.timeout(90)
def test_num_cpus_caps_concurrently_running_tasks(ray_start, tmp_path):
    # The first two wait (bounded) for a peer so that the cap is reached; the
    # others only record what they see.
    refs = [occupy.remote(str(tmp_path), 2, 0.3) for _ in range(2)]
    refs += [occupy.remote(str(tmp_path), 1, 0.3) for _ in range(4)]
    observed = runtime.get(refs, timeout=80)
    assert max(observed) == 2, f"concurrency seen by each task: {observed}"


@pytest.mark.timeout(90)
def test_num_cpus_option_reduces_concurrency_when_task_needs_two(ray_start, tmp_path):
    refs = [occupy.options(num_cpus=2).remote(str(tmp_path), 1, 0.2) for _ in range(3)]
    observed = runtime.get(refs, timeout=80)
    assert max(observed) == 1, f"concurrency seen by each task: {observed}"


@runtime.remote
def leaf(x):
    return x * 10


@runtime.remote
def parent(x):
    return runtime.get(leaf.remote(x)) + 1


@runtime.remote
def grandparent(x):
    return runtime.get(parent.remote(x)) + 1


@pytest.mark.timeout(60)
@pytest.mark.parametrize("ray_start", [{"num_cpus": 1}], indirect=True)
def test_nested_get_does_not_deadlock_when_one_cpu(ray_start):
    assert runtime.get(grandparent.remote(4), timeout=45) == 42
    assert runtime.get([parent.remote(i) for i in range(3)], timeout=45) == [1, 11, 21]


@pytest.mark.parametrize(
    "ray_start", [{"num_cpus": 2, "resources": {"custom": 1}}], indirect=True
)
def test_custom_resource_schedules_task_when_available(ray_start):
    assert runtime.cluster_resources().get("custom") == 1

    @runtime.remote(resources={"custom": 1})
    def uses_custom():
        return runtime.get_runtime_context().get_assigned_resources()

    assigned = runtime.get(uses_custom.remote(), timeout=30)
    assert assigned.get("custom") == 1

    too_much = uses_custom.options(resources={"custom": 2}).remote()
    with pytest.raises(GetTimeoutError):
        runtime.get(too_much, timeout=1)
    runtime.cancel(too_much)


@runtime.remote(num_gpus=1)
def gpu_view():
    return runtime.get_gpu_ids(), os.environ.get("CUDA_VISIBLE_DEVICES")


@pytest.mark.parametrize("ray_start", [{"num_cpus": 2, "num_gpus": 2}], indirect=True)
def test_num_gpus_assigns_one_gpu_id_and_sets_cuda_visible_devices(ray_start):
    assert runtime.cluster_resources().get("GPU") == 2
    results = runtime.get([gpu_view.remote() for _ in range(4)], timeout=60)
    for ids, visible in results:
        assert len(ids) == 1, results
        assert str(ids[0]) in {"0", "1"}, results
        assert visible == str(ids[0]), results


@pytest.mark.parametrize(
    "ray_start",
    [{"num_cpus": 2, "runtime_env": {"env_vars": {"ORR_JOB_VAR": "job-level"}}}],
    indirect=True,
)
def test_runtime_env_env_vars_apply_to_tasks_and_actors_when_set_in_init(ray_start):
    assert runtime.get(read_env.remote("ORR_JOB_VAR"), timeout=30) == "job-level"

    @runtime.remote
    class EnvReader:
        def read(self, name):
            return os.environ.get(name)

    reader = EnvReader.remote()
    assert runtime.get(reader.read.remote("ORR_JOB_VAR"), timeout=30) == "job-level"
    # A task-level value overrides the job's.
    override = read_env.options(runtime_env={"env_vars": {"ORR_JOB_VAR": "task"}})
    assert runtime.get(override.remote("ORR_JOB_VAR"), timeout=30) == "task"
