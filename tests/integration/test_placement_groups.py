"""Placement groups on a real cluster: reservation, tasks and actors in bundles, pending groups
that say why, removal, names, lifetimes, capture of child tasks."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import cloudpickle
import pytest

import runtime
from runtime._testing.sync import wait_for
from runtime.exceptions import ActorDiedError
from runtime.util import (
    get_current_placement_group,
    get_placement_group,
    placement_group,
    placement_group_table,
    remove_placement_group,
)
from runtime.util.scheduling_strategies import PlacementGroupSchedulingStrategy
from runtime.util import state

cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture
def cluster(ray_start):
    return ray_start


@pytest.fixture
def pgs():
    made = []
    yield made
    for pg in made:
        remove_placement_group(pg)


def cpu_free():
    return runtime.available_resources().get("CPU", 0.0)


@runtime.remote(num_cpus=1)
def assigned():
    return runtime.get_runtime_context().get_assigned_resources()


@runtime.remote(num_cpus=1)
def plain():
    return "ran"


@pytest.mark.parametrize("ray_start", [{"num_cpus": 2}], indirect=True)
def test_ready_reserves_and_tasks_run_in_their_bundle(cluster, pgs):
    pg = placement_group([{"CPU": 1}, {"CPU": 1}], strategy="STRICT_PACK")
    pgs.append(pg)
    assert runtime.get(pg.ready(), timeout=20) == pg
    assert pg.wait(5)
    row = placement_group_table(pg)
    assert row["state"] == "CREATED" and row["strategy"] == "STRICT_PACK" and len(row["bundles_to_node_id"]) == 2
    assert cpu_free() == 0  # both CPUs are the group's now
    # Ray's shape: bundles and their nodes by bundle index, stats; no argument: every group by id.
    assert row["bundles"] == {0: {"CPU": 1.0}, 1: {"CPU": 1.0}} and row["placement_group_id"] == pg.id
    assert set(row["bundles_to_node_id"]) == {0, 1} and row["name"] == ""
    assert row["stats"]["scheduling_state"] == "FINISHED" and row["stats"]["end_to_end_creation_latency_ms"] >= 0
    assert placement_group_table()[pg.id] == row
    got = runtime.get(assigned.options(scheduling_strategy=PlacementGroupSchedulingStrategy(pg, 1)).remote())
    assert got[f"CPU_group_1_{pg.id}"] == 1.0
    # A task outside the group cannot use the reserved CPUs; it runs once the group is removed.
    outside = plain.remote()
    assert runtime.wait([outside], timeout=1.0)[0] == []
    remove_placement_group(pgs.pop())
    assert runtime.get(outside, timeout=20) == "ran"
    assert placement_group_table(pg)["state"] == "REMOVED"
    wait_for(lambda: cpu_free() == 2, timeout=10, what="both CPUs back")


@pytest.mark.parametrize("ray_start", [{"num_cpus": 2}], indirect=True)
def test_groups_that_cannot_be_placed_stay_pending_and_say_why(cluster, pgs):
    too_big = placement_group([{"CPU": 5}])
    spread = placement_group([{"CPU": 1}, {"CPU": 1}], strategy="STRICT_SPREAD")
    pgs += [too_big, spread]
    assert not too_big.wait(0.5)
    wait_for(lambda: "infeasible" in placement_group_table(too_big)["pending_reason"], timeout=10, what="reason")
    assert "{'CPU': 5.0}" in placement_group_table(too_big)["pending_reason"]
    wait_for(lambda: "STRICT_SPREAD needs 2 nodes" in placement_group_table(spread)["pending_reason"],
             timeout=10, what="the STRICT_SPREAD reason")
    rows = {r["placement_group_id"]: r for r in state.list_placement_groups()}
    assert rows[too_big.id]["state"] == "PENDING"


@pytest.mark.parametrize("ray_start", [{"num_cpus": 2}], indirect=True)
def test_a_group_waits_for_resources_then_is_placed(cluster, pgs):
    first = placement_group([{"CPU": 2}])
    pgs.append(first)
    runtime.get(first.ready(), timeout=20)
    second = placement_group([{"CPU": 1}])
    pgs.append(second)
    assert not second.wait(0.3)
    assert "waiting for resources" in placement_group_table(second)["pending_reason"]
    remove_placement_group(pgs.pop(0))
    assert second.wait(10)


@runtime.remote(num_cpus=1)
class InGroup:
    def ping(self):
        return "pong"


@pytest.mark.parametrize("ray_start", [{"num_cpus": 2}], indirect=True)
def test_actor_in_a_bundle_dies_with_its_group(cluster, pgs):
    pg = placement_group([{"CPU": 1}], name="actor-group")
    runtime.get(pg.ready(), timeout=20)
    assert get_placement_group("actor-group") == pg
    actor = InGroup.options(scheduling_strategy=PlacementGroupSchedulingStrategy(pg, 0)).remote()
    assert runtime.get(actor.ping.remote(), timeout=20) == "pong"
    remove_placement_group(pg)
    with pytest.raises(ActorDiedError):
        wait_for(lambda: runtime.get(actor.ping.remote(), timeout=10) and False, timeout=20,
                 what="the actor to die with its group", retry_on=())


@runtime.remote(num_cpus=1)
def parent_in_group():
    child = runtime.get(assigned.options(num_cpus=0.5).remote())
    current = get_current_placement_group()
    return current.id if current else None, child


@pytest.mark.parametrize("ray_start", [{"num_cpus": 2}], indirect=True)
def test_capture_child_tasks_puts_children_in_the_group(cluster, pgs):
    pg = placement_group([{"CPU": 2}])
    pgs.append(pg)
    runtime.get(pg.ready(), timeout=20)
    strategy = PlacementGroupSchedulingStrategy(pg, placement_group_capture_child_tasks=True)
    pg_id, child = runtime.get(parent_in_group.options(scheduling_strategy=strategy).remote(), timeout=30)
    assert pg_id == pg.id
    assert child.get(f"CPU_group_{pg.id}") == 0.5  # the child ran in the group too


@pytest.mark.parametrize("ray_start", [{"num_cpus": 2}], indirect=True)
def test_bad_placement_input_gets_clear_errors(cluster, pgs):
    with pytest.raises(ValueError, match="Unknown placement strategy 'TIGHT'"):
        placement_group([{"CPU": 1}], strategy="TIGHT")
    with pytest.raises(ValueError, match="non-empty list of bundles"):
        placement_group([])
    pg = placement_group([{"CPU": 1}])
    pgs.append(pg)
    with pytest.raises(ValueError, match="placement_group_bundle_index must be -1"):
        PlacementGroupSchedulingStrategy(pg, 3)
    with pytest.raises(ValueError, match="more than bundle 0"):
        plain.options(num_cpus=2, scheduling_strategy=PlacementGroupSchedulingStrategy(pg, 0)).remote()
    with pytest.raises(ValueError, match="No placement group named 'nope'"):
        get_placement_group("nope")


@pytest.mark.parametrize("ray_start", [{"num_cpus": 2}], indirect=True)
def test_detached_groups_outlive_their_driver_and_others_do_not(cluster, pgs):
    address = runtime.get_runtime_context().gcs_address
    code = textwrap.dedent(f"""
        import runtime
        from runtime.util import placement_group
        runtime.init(address={address!r}, namespace="pg-test")
        kept = placement_group([{{"CPU": 0.5}}], name="kept", lifetime="detached")
        gone = placement_group([{{"CPU": 0.5}}], name="gone")
        assert kept.wait(20) and gone.wait(20)
        print(kept.id, gone.id)
        runtime.shutdown()
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    kept_id, gone_id = out.stdout.split()
    table = placement_group_table()
    wait_for(lambda: placement_group_table()[gone_id]["state"] == "REMOVED", timeout=10,
             what="the driver's own group removed when it exited")
    assert table[kept_id]["state"] == "CREATED" and placement_group_table()[kept_id]["state"] == "CREATED"
    from runtime.util.placement_group import PlacementGroup
    kept = PlacementGroup(kept_id, [{"CPU": 0.5}])
    remove_placement_group(kept)
