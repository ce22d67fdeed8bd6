"""Several node managers on one machine, each with its own resources, workers and object
store, joined to one control store (runtime.cluster_utils.Cluster): scheduling across nodes,
custom resources, strategies, and objects pulled between node stores."""

from __future__ import annotations

import os
import sys
import time

import cloudpickle
import numpy as np
import pytest

import runtime
from runtime._testing.sync import wait_for, wait_for_path
from runtime.util import placement_group, remove_placement_group
from runtime.util.scheduling_strategies import NodeAffinitySchedulingStrategy

cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = pytest.mark.slow


def node_of() -> str:
    return runtime.get_runtime_context().get_node_id()


@runtime.remote
def where(hold_s: float = 0.0) -> str:
    time.sleep(hold_s)  # hold the CPU so that the next tasks need another node
    return node_of()


def store_objects(node_id: str) -> int:
    from runtime._core import worker_state
    cw = worker_state.current()
    reply, _ = cw.run_sync(cw.gcs_request({"op": "cluster_resources"}))
    return reply["nodes"][node_id]["store"]["num_objects"]


def test_nodes_join_and_their_resources_add_up(make_cluster):
    c = make_cluster(head={"num_cpus": 1}, workers=[{"num_cpus": 2, "resources": {"x86": 1}}])
    alive = [n for n in runtime.nodes() if n["Alive"]]
    assert len(alive) == 2
    res = runtime.cluster_resources()
    assert res["CPU"] == 3 and res["x86"] == 1
    assert {c.head_node.node_id, c.worker_nodes[0].node_id} == {n["NodeID"] for n in alive}


def test_tasks_spill_to_another_node_when_the_first_is_full(make_cluster):
    c = make_cluster(head={"num_cpus": 1}, workers=[{"num_cpus": 2}], scheduler_spread_threshold=1.0)
    nodes = runtime.get([where.remote(0.5) for _ in range(3)])
    # One CPU on the head: at most one of three concurrent tasks ran there; the rest spilled.
    assert nodes.count(c.worker_nodes[0].node_id) >= 2, nodes


def test_custom_resources_route_tasks_and_actors_to_the_node_that_has_them(make_cluster):
    c = make_cluster(head={"num_cpus": 2}, workers=[{"num_cpus": 1, "resources": {"x86": 1}}])
    x86 = c.worker_nodes[0].node_id
    assert set(runtime.get([where.options(resources={"x86": 0.5}).remote() for _ in range(4)])) == {x86}

    @runtime.remote(resources={"x86": 1})
    class OnX86:
        def node(self):
            return node_of()

    a = OnX86.remote()
    assert runtime.get(a.node.remote()) == x86


def test_spread_uses_every_node(make_cluster):
    make_cluster(head={"num_cpus": 2}, workers=[{"num_cpus": 2}])
    nodes = runtime.get([where.options(scheduling_strategy="SPREAD").remote() for _ in range(4)])
    assert len(set(nodes)) == 2, nodes


def test_node_affinity_hard_and_soft(make_cluster):
    c = make_cluster(head={"num_cpus": 1}, workers=[{"num_cpus": 1}])
    worker = c.worker_nodes[0].node_id
    for _ in range(3):
        strategy = NodeAffinitySchedulingStrategy(worker, soft=False)
        assert runtime.get(where.options(scheduling_strategy=strategy).remote()) == worker
    missing = "ab" * 16
    with pytest.raises(ValueError, match="not alive"):
        runtime.get(where.options(scheduling_strategy=NodeAffinitySchedulingStrategy(missing, soft=False)).remote())
    soft = NodeAffinitySchedulingStrategy(missing, soft=True)
    assert runtime.get(where.options(scheduling_strategy=soft).remote()) in {worker, c.head_node.node_id}


def test_large_objects_are_pulled_between_node_stores_and_freed_everywhere(make_cluster):
    c = make_cluster(head={"num_cpus": 1}, workers=[{"num_cpus": 1, "resources": {"far": 1}}])
    head, far = c.head_node.node_id, c.worker_nodes[0].node_id

    @runtime.remote(resources={"far": 1})
    def make(n):
        return np.arange(n, dtype=np.int64)

    @runtime.remote
    def total(a):
        return int(a.sum()), node_of()

    n = 3_000_000  # 24 MB: several chunks
    ref = make.remote(n)
    on_head = NodeAffinitySchedulingStrategy(head, soft=False)
    assert runtime.get(total.options(scheduling_strategy=on_head).remote(ref)) == (n * (n - 1) // 2, head)
    value = runtime.get(ref)  # the driver, on the head, maps the copy already pulled there
    assert value[-1] == n - 1 and not value.flags.writeable
    assert store_objects(head) >= 1 and store_objects(far) >= 1
    del value, ref
    wait_for(lambda: store_objects(head) == 0 and store_objects(far) == 0, timeout=20,
             what="the primary and the pulled copy to be freed")


def test_placement_group_strict_spread_uses_two_nodes(make_cluster):
    c = make_cluster(head={"num_cpus": 1}, workers=[{"num_cpus": 1}])
    pg = placement_group([{"CPU": 1}, {"CPU": 1}], strategy="STRICT_SPREAD")
    try:
        assert pg.wait(20)
        from runtime.util import placement_group_table
        nodes = placement_group_table(pg)["bundles_to_node_id"]
        assert set(nodes.values()) == {c.head_node.node_id, c.worker_nodes[0].node_id}
    finally:
        remove_placement_group(pg)


def test_a_task_waiting_for_resources_runs_when_a_node_with_them_joins(make_cluster):
    c = make_cluster(head={"num_cpus": 1})
    ref = where.options(resources={"late": 1}).remote()
    ready, _ = runtime.wait([ref], timeout=0.5)
    assert not ready
    late = c.add_node(num_cpus=1, resources={"late": 1})
    assert runtime.get(ref, timeout=30) == late.node_id


@pytest.mark.parametrize("threshold, spread", [(0.5, True), (1.0, False)])
def test_default_packs_up_to_the_spread_threshold_then_spreads(make_cluster, tmp_path, threshold, spread):
    c = make_cluster(head={"num_cpus": 4}, workers=[{"num_cpus": 4}], scheduler_spread_threshold=threshold)
    go = tmp_path / "go"

    started = tmp_path / "started"
    started.mkdir()

    @runtime.remote
    def hold(go, started):
        import os
        open(os.path.join(started, str(os.getpid())), "w").close()
        wait_for_path(go)
        return node_of()

    refs = [hold.remote(str(go), str(started)) for _ in range(4)]
    # All four running at once before any ends (else a freed worker would take a queued task).
    wait_for(lambda: len(os.listdir(started)) == 4, timeout=30, what="four tasks running")
    go.write_text("go")
    nodes = runtime.get(refs, timeout=30)
    if spread:  # two on the head (50% used), the next two on the less used worker node
        assert nodes.count(c.head_node.node_id) == 2 and nodes.count(c.worker_nodes[0].node_id) == 2, nodes
    else:
        assert set(nodes) == {c.head_node.node_id}, nodes
