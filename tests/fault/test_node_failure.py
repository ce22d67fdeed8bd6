"""A node manager SIGKILLed mid-work (as a crashed or lost machine): its running tasks are
retried on another node and each result arrives once, its actors restart elsewhere and answer
again, its placement-group bundles are placed again, and objects whose only copy it held are
rebuilt from lineage (or reported lost when they cannot be)."""

from __future__ import annotations

import os
import sys

import cloudpickle
import numpy as np
import pytest

import runtime
from runtime._testing.sync import wait_for
from runtime.exceptions import ObjectLostError, ObjectReconstructionFailedError
from runtime.util import placement_group, placement_group_table, remove_placement_group
from runtime.util.scheduling_strategies import NodeAffinitySchedulingStrategy

cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = [pytest.mark.fault, pytest.mark.slow]

FAST_DEATH = {"node_death_timeout_s": 2.0, "heartbeat_interval_s": 0.2}


def node_of() -> str:
    return runtime.get_runtime_context().get_node_id()


def test_tasks_running_on_a_killed_node_are_retried_elsewhere(make_cluster, tmp_path):
    c = make_cluster(head={"num_cpus": 2}, workers=[{"num_cpus": 2, "resources": {"victim": 1}}], **FAST_DEATH)
    started = tmp_path / "started"
    started.mkdir()

    @runtime.remote(max_retries=2)
    def step(i, marker_dir):
        import pathlib
        import time
        pathlib.Path(marker_dir, f"{i}-{os.getpid()}").touch()
        time.sleep(1.0)
        return i * i, node_of()

    victim = c.worker_nodes[0].node_id
    on_victim = NodeAffinitySchedulingStrategy(victim, soft=True)
    refs = [step.options(scheduling_strategy=on_victim).remote(i, str(started)) for i in range(2)]
    wait_for(lambda: len(os.listdir(started)) >= 2, timeout=30, what="both tasks running on the victim")
    c.remove_node(c.worker_nodes[0], allow_graceful=False)
    results = runtime.get(refs, timeout=60)
    assert [r[0] for r in results] == [0, 1]
    assert all(r[1] == c.head_node.node_id for r in results), results


def test_an_actor_on_a_killed_node_restarts_on_another(make_cluster):
    c = make_cluster(head={"num_cpus": 1}, workers=[{"num_cpus": 1}], **FAST_DEATH)
    victim = c.worker_nodes[0].node_id

    @runtime.remote(max_restarts=1, max_task_retries=1)
    class Counter:
        def __init__(self):
            self.n = 0

        def incr(self):
            self.n += 1
            return self.n, node_of()

    a = Counter.options(scheduling_strategy=NodeAffinitySchedulingStrategy(victim, soft=True)).remote()
    assert runtime.get(a.incr.remote()) == (1, victim)
    c.remove_node(c.worker_nodes[0], allow_graceful=False)
    n, node = runtime.get(a.incr.remote(), timeout=60)
    assert node == c.head_node.node_id and n == 1  # a fresh instance: state is not kept across restarts


def test_placement_group_bundles_on_a_killed_node_are_placed_again(make_cluster):
    c = make_cluster(head={"num_cpus": 1}, workers=[{"num_cpus": 1}], **FAST_DEATH)
    pg = placement_group([{"CPU": 1}, {"CPU": 1}], strategy="SPREAD")
    try:
        assert pg.wait(20)
        spare = c.add_node(num_cpus=1)
        victim = next(n for n in c.worker_nodes if n is not spare)
        c.remove_node(victim, allow_graceful=False)
        wait_for(lambda: placement_group_table(pg)["state"] == "CREATED" and victim.node_id not in
                 placement_group_table(pg)["bundles_to_node_id"].values(), timeout=60, what="the group whole again")
        assert set(placement_group_table(pg)["bundles_to_node_id"].values()) == {c.head_node.node_id, spare.node_id}
    finally:
        remove_placement_group(pg)


def test_an_object_whose_only_copy_was_on_a_killed_node_is_rebuilt_from_lineage(make_cluster, tmp_path):
    c = make_cluster(head={"num_cpus": 1}, workers=[{"num_cpus": 1, "resources": {"victim": 1}}], **FAST_DEATH)
    runs = tmp_path / "runs"
    runs.mkdir()

    @runtime.remote(max_retries=1)
    def make(n, marker_dir):
        import pathlib
        pathlib.Path(marker_dir, str(os.getpid())).touch()
        return np.full(n, 7, dtype=np.int64), node_of()

    victim = c.worker_nodes[0].node_id
    ref = make.options(scheduling_strategy=NodeAffinitySchedulingStrategy(victim, soft=True),
                       num_returns=1).remote(1_000_000, str(runs))
    runtime.wait([ref], timeout=30)
    c.remove_node(c.worker_nodes[0], allow_graceful=False)
    value, node = runtime.get(ref, timeout=60)
    assert int(value.sum()) == 7_000_000 and node == c.head_node.node_id
    assert len(os.listdir(runs)) == 2  # built twice: once on the victim, once again from lineage


def test_a_lost_object_that_cannot_be_rebuilt_is_reported(make_cluster):
    c = make_cluster(head={"num_cpus": 1}, workers=[{"num_cpus": 1, "resources": {"victim": 1}}], **FAST_DEATH)

    @runtime.remote(max_retries=0)
    def make():
        return np.ones(1_000_000)

    victim = c.worker_nodes[0].node_id
    ref = make.options(scheduling_strategy=NodeAffinitySchedulingStrategy(victim, soft=True)).remote()
    runtime.wait([ref], timeout=30)
    c.remove_node(c.worker_nodes[0], allow_graceful=False)
    with pytest.raises(ObjectReconstructionFailedError, match="max_retries"):
        runtime.get(ref, timeout=60)
    assert issubclass(ObjectReconstructionFailedError, ObjectLostError)
