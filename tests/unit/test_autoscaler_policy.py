"""The autoscaler's pure policy: launches, terminations and unmet demand for one snapshot."""

from __future__ import annotations

import copy
import random

import pytest

from runtime.autoscaler.policy import (
    UPSCALING_FLOOR,
    NodeState,
    NodeType,
    PlacementGroupDemand,
    decide,
)

CPU = NodeType("cpu", {"CPU": 2}, max_workers=10)
BIG = NodeType("big", {"CPU": 8}, max_workers=10)
GPU = NodeType("gpu", {"CPU": 4, "GPU": 1}, max_workers=10)
HEAD = NodeState("head", "head", total={"CPU": 2}, available={"CPU": 0}, is_head=True)


def busy(node_id, node_type="cpu", total=None, available=None):
    total = total or {"CPU": 2}
    return NodeState(node_id, node_type, total, available if available is not None else {"CPU": 0})


def idle(node_id, since, node_type="cpu", total=None):
    total = total or {"CPU": 2}
    return NodeState(node_id, node_type, total, dict(total), idle_since=since)


def starting(node_id, node_type="cpu"):
    return NodeState(node_id, node_type, starting=True)


# -- scaling up --------------------------------------------------------------------------


def test_nothing_to_do_on_an_empty_cluster_without_demand():
    d = decide([CPU], [HEAD], now=0)
    assert d.is_noop and d.launch == {} and d.terminate == {} and d.infeasible == [] and d.waiting == []


def test_min_workers_are_launched_and_counted_with_starting_nodes():
    t = NodeType("cpu", {"CPU": 2}, min_workers=3, max_workers=5)
    d = decide([t], [HEAD, busy("a"), starting("b")], now=0)
    assert d.launch == {"cpu": 1} and d.launch_causes == {"cpu": {"min_workers": 1}}


def test_min_workers_stop_at_the_cluster_max_workers():
    types = [NodeType("a", {"CPU": 1}, min_workers=2, max_workers=2),
             NodeType("b", {"CPU": 1}, min_workers=2, max_workers=2)]
    assert decide(types, [HEAD], now=0, max_workers=3).launch == {"a": 2, "b": 1}  # types by name


def test_demand_that_fits_free_capacity_launches_nothing():
    nodes = [HEAD, busy("a", available={"CPU": 1}), starting("b")]
    d = decide([CPU], nodes, now=0, pending=[{"CPU": 1}, {"CPU": 2}])
    assert d.is_noop and d.waiting == []


def test_starting_nodes_are_not_launched_twice():
    # The same demand, seen again while the nodes launched for it start, launches nothing more.
    first = decide([CPU], [HEAD], now=0, pending=[{"CPU": 1}] * 4)
    assert first.launch == {"cpu": 2}
    again = decide([CPU], [HEAD, starting("s1"), starting("s2")], now=5, pending=[{"CPU": 1}] * 4)
    assert again.is_noop


def test_pending_demand_is_packed_onto_as_few_new_nodes_as_fit():
    d = decide([CPU], [HEAD], now=0, pending=[{"CPU": 1}] * 5)
    assert d.launch == {"cpu": 3} and d.launch_causes == {"cpu": {"demand": 3}}


def test_first_fit_decreasing_places_big_demands_first():
    # In the order given, first fit needs three 4-CPU nodes (1+1, 3, 3); largest first needs two.
    t = NodeType("four", {"CPU": 4}, max_workers=10)
    d = decide([t], [HEAD], now=0, pending=[{"CPU": 1}, {"CPU": 1}, {"CPU": 3}, {"CPU": 3}])
    assert d.launch == {"four": 2}


def test_the_smallest_type_that_fits_is_launched():
    d = decide([BIG, GPU, CPU], [HEAD], now=0, pending=[{"CPU": 1}])
    assert d.launch == {"cpu": 1}  # not the GPU node, not the 8-CPU node
    d = decide([BIG, GPU, CPU], [HEAD], now=0, pending=[{"CPU": 1, "GPU": 1}])
    assert d.launch == {"gpu": 1}
    d = decide([BIG, GPU, CPU], [HEAD], now=0, pending=[{"CPU": 6}])
    assert d.launch == {"big": 1}


def test_sizes_compare_resources_as_shares_so_memory_bytes_do_not_dominate():
    small = NodeType("small", {"CPU": 2, "memory": 4e9}, max_workers=5)
    wide = NodeType("wide", {"CPU": 16, "memory": 2e9}, max_workers=5)
    # By raw sums 'wide' (2e9 + 16) looks smaller than 'small' (4e9 + 2); it is not.
    assert decide([small, wide], [HEAD], now=0, pending=[{"CPU": 1}]).launch == {"small": 1}


def test_small_demands_fill_the_new_node_launched_for_a_big_one():
    d = decide([CPU, GPU], [HEAD], now=0, pending=[{"CPU": 1}, {"CPU": 1}, {"GPU": 1}])
    assert d.launch == {"gpu": 1}  # the GPU node has 4 CPUs: both CPU tasks fit beside the GPU one


def test_the_cluster_max_workers_caps_launches_and_the_rest_waits():
    d = decide([CPU], [HEAD, busy("a")], now=0, pending=[{"CPU": 2}] * 4, max_workers=3)
    assert d.launch == {"cpu": 2}
    assert len(d.waiting) == 2 and d.infeasible == []
    assert "max_workers (3)" in d.waiting[0].reason and d.waiting[0].source == "task or actor"


def test_a_type_at_its_max_workers_gives_way_to_a_bigger_type():
    small = NodeType("cpu", {"CPU": 2}, max_workers=1)
    d = decide([small, BIG], [HEAD], now=0, pending=[{"CPU": 2}, {"CPU": 2}])
    assert d.launch == {"cpu": 1, "big": 1}


def test_when_every_fitting_type_is_at_its_max_the_reason_names_each():
    small = NodeType("cpu", {"CPU": 2}, max_workers=1)
    big = NodeType("big", {"CPU": 8}, max_workers=1)
    d = decide([small, big], [HEAD, busy("a"), busy("b", "big", {"CPU": 8})], now=0, pending=[{"CPU": 1}])
    assert d.launch == {}
    (w,) = d.waiting
    assert "'cpu' is at its max_workers (1)" in w.reason and "'big' is at its max_workers (1)" in w.reason


def test_upscaling_speed_caps_the_nodes_starting_at_once():
    d = decide([CPU], [HEAD], now=0, pending=[{"CPU": 2}] * 8, upscaling_speed=1.0)
    assert d.launch == {"cpu": UPSCALING_FLOOR}
    assert len(d.waiting) == 8 - UPSCALING_FLOOR and "upscaling_speed 1 allows 5" in d.waiting[0].reason
    # With 8 nodes up, speed 1 allows 8 starting: 2 already are (and take 2 tasks), so 6 more.
    many = NodeType("cpu", {"CPU": 2}, max_workers=50)
    up = [busy(f"n{i}") for i in range(8)] + [starting("s1"), starting("s2")]
    d = decide([many], [HEAD, *up], now=0, pending=[{"CPU": 2}] * 12, upscaling_speed=1.0)
    assert d.launch == {"cpu": 6} and len(d.waiting) == 4


def test_upscaling_speed_does_not_push_demand_onto_a_bigger_type():
    d = decide([CPU, BIG], [HEAD], now=0, pending=[{"CPU": 2}] * 7, upscaling_speed=1.0)
    assert d.launch == {"cpu": UPSCALING_FLOOR}  # the rest waits for small nodes, no 8-CPU node


def test_upscaling_speed_does_not_hold_back_min_workers_or_request_resources():
    t = NodeType("cpu", {"CPU": 2}, min_workers=7, max_workers=20)
    assert decide([t], [HEAD], now=0, upscaling_speed=1.0).launch == {"cpu": 7}
    d = decide([CPU], [HEAD], now=0, requested=[{"CPU": 2}] * 8, upscaling_speed=1.0)
    assert d.launch == {"cpu": 7}  # the head's 2 CPUs count for one bundle


def test_zero_amounts_and_empty_demands_ask_for_nothing():
    assert decide([CPU], [HEAD], now=0, pending=[{}, {"CPU": 0}]).is_noop


# -- infeasible demand -------------------------------------------------------------------


def test_a_resource_no_node_type_has_is_infeasible_with_its_name():
    d = decide([CPU, GPU], [HEAD], now=0, pending=[{"TPU": 1}])
    (u,) = d.infeasible
    assert d.launch == {} and u.resources == ({"TPU": 1.0},)
    assert u.reason == "no node type and no node has 'TPU' at all"


def test_more_than_any_node_type_has_is_infeasible_with_the_largest():
    (u,) = decide([CPU, BIG], [HEAD], now=0, pending=[{"CPU": 9}]).infeasible
    assert "it needs 'CPU': 9" in u.reason and "the most is 8, on node type 'big'" in u.reason


def test_resources_spread_over_types_but_on_no_single_one_are_infeasible():
    wide = NodeType("wide", {"CPU": 16}, max_workers=2)
    (u,) = decide([wide, GPU], [HEAD], now=0, pending=[{"CPU": 8, "GPU": 1}]).infeasible
    assert "no single node type or node has all of it together" in u.reason
    assert "lacks {'CPU': 4}" in u.reason or "lacks {'GPU': 1}" in u.reason


def test_a_type_that_would_fit_but_may_have_no_workers_is_named():
    never = NodeType("gpu", {"CPU": 4, "GPU": 1}, max_workers=0)
    (u,) = decide([CPU, never], [HEAD], now=0, pending=[{"GPU": 1}]).infeasible
    assert "node type 'gpu' would hold it, but max_workers is 0" in u.reason
    (u,) = decide([CPU, GPU], [HEAD], now=0, pending=[{"GPU": 1}], max_workers=0).infeasible
    assert "the cluster's max_workers is 0" in u.reason


def test_demand_that_only_an_existing_node_can_hold_waits_instead_of_being_infeasible():
    head = NodeState("head", "head", {"CPU": 2, "special": 1}, {"CPU": 2, "special": 0}, is_head=True)
    d = decide([CPU], [head], now=0, pending=[{"special": 1}])
    assert d.infeasible == [] and d.launch == {}
    (w,) = d.waiting
    assert "fits only on existing nodes" in w.reason


def test_infeasible_demand_does_not_stop_the_rest_from_scaling():
    d = decide([CPU], [HEAD], now=0, pending=[{"GPU": 1}, {"CPU": 1}])
    assert d.launch == {"cpu": 1} and len(d.infeasible) == 1


# -- placement groups ----------------------------------------------------------------------


def test_strict_pack_needs_one_node_holding_the_sum():
    four = NodeType("four", {"CPU": 4}, max_workers=5)
    pg = PlacementGroupDemand([{"CPU": 1}] * 3, "STRICT_PACK", name="g")
    assert decide([CPU, four], [HEAD], now=0, placement_groups=[pg]).launch == {"four": 1}
    too_big = PlacementGroupDemand([{"CPU": 2}] * 3, "STRICT_PACK", name="g")
    (u,) = decide([CPU, four], [HEAD], now=0, placement_groups=[too_big]).infeasible
    assert u.source == "placement group 'g' (STRICT_PACK)" and u.resources == ({"CPU": 2.0},) * 3
    assert "it needs 'CPU': 6" in u.reason


def test_strict_spread_takes_a_distinct_node_per_bundle():
    pg = PlacementGroupDemand([{"CPU": 1}] * 3, "STRICT_SPREAD")
    four = NodeType("four", {"CPU": 4}, max_workers=5)
    assert decide([four], [HEAD], now=0, placement_groups=[pg]).launch == {"four": 3}  # not one node
    # Existing free nodes count, each once.
    nodes = [HEAD, idle("a", 0, "four", {"CPU": 4}), idle("b", 0, "four", {"CPU": 4})]
    assert decide([four], nodes, now=1, placement_groups=[pg]).launch == {"four": 1}


def test_strict_spread_is_all_or_nothing():
    pg = PlacementGroupDemand([{"CPU": 1}] * 3, "STRICT_SPREAD", name="s")
    d = decide([CPU], [HEAD, busy("a")], now=0, placement_groups=[pg], max_workers=3)
    # Two more nodes can be launched, the third bundle has none: launching two would only waste them.
    assert d.launch == {}
    (w,) = d.waiting
    assert w.source == "placement group 's' (STRICT_SPREAD)" and "needs 3 distinct nodes" in w.reason


def test_strict_spread_wider_than_the_cluster_can_ever_be_is_infeasible():
    pg = PlacementGroupDemand([{"CPU": 1}] * 5, "STRICT_SPREAD")
    (u,) = decide([CPU], [HEAD], now=0, placement_groups=[pg], max_workers=3).infeasible
    assert "needs 5 distinct nodes" in u.reason and "at most 4" in u.reason


def test_pack_and_spread_bundles_are_placed_one_by_one():
    for strategy in ("PACK", "SPREAD"):
        pg = PlacementGroupDemand([{"CPU": 2}, {"CPU": 2}, {"CPU": 1}], strategy, name="p")
        d = decide([CPU, BIG], [HEAD], now=0, placement_groups=[pg])
        assert d.launch == {"cpu": 3}
        (w,) = decide([CPU], [HEAD], now=0, placement_groups=[pg], max_workers=2).waiting
        assert w.source == f"placement group 'p' ({strategy}) bundle 2"


def test_tasks_waiting_for_a_placement_group_bundle_are_not_demand():
    d = decide([CPU], [HEAD], now=0, pending=[{"CPU_group_0_abc": 1}, {"CPU_group_abc": 1}])
    assert d.is_noop and d.infeasible == []


def test_an_unknown_strategy_fails_loudly():
    with pytest.raises(ValueError, match="unknown strategy 'PACKED'"):
        PlacementGroupDemand([{"CPU": 1}], "PACKED")


# -- request_resources -----------------------------------------------------------------------


def test_request_resources_counts_total_capacity_not_what_is_free():
    nodes = [HEAD, busy("a"), busy("b")]  # everything in use, 6 CPUs in all, the head's included
    assert decide([CPU], nodes, now=0, requested=[{"CPU": 2}] * 3).is_noop
    d = decide([CPU], nodes, now=0, requested=[{"CPU": 2}] * 5)
    assert d.launch == {"cpu": 2} and d.launch_causes == {"cpu": {"request_resources": 2}}


def test_nodes_launched_for_request_resources_also_take_pending_demand():
    d = decide([CPU], [HEAD], now=0, requested=[{"CPU": 2}], pending=[{"CPU": 1}])
    assert d.launch == {"cpu": 1}


def test_request_resources_keeps_idle_nodes_it_needs():
    nodes = [HEAD, idle("a", 0), idle("b", 0)]
    d = decide([CPU], nodes, now=1000, idle_timeout_s=60, requested=[{"CPU": 2}] * 2)
    assert len(d.terminate) == 1  # the head and one idle node hold the request; the other goes


def test_request_resources_beyond_limits_waits_and_beyond_every_type_is_infeasible():
    d = decide([CPU], [HEAD], now=0, requested=[{"CPU": 2}] * 4, max_workers=2)
    assert d.launch == {"cpu": 2}  # and the head holds one
    (w,) = d.waiting
    assert w.source == "request_resources" and "total capacity cannot hold it" in w.reason
    (u,) = decide([CPU], [HEAD], now=0, requested=[{"GPU": 1}]).infeasible
    assert u.source == "request_resources"


# -- scaling down ----------------------------------------------------------------------------


def test_idle_workers_go_after_the_timeout_and_not_before():
    nodes = [HEAD, idle("old", 100), idle("new", 350)]
    d = decide([CPU], nodes, now=410, idle_timeout_s=300)
    assert list(d.terminate) == ["old"] and "idle for 310 s" in d.terminate["old"]


def test_nodes_with_work_are_never_terminated():
    lent = NodeState("lent", "cpu", {"CPU": 2}, {"CPU": -1}, idle_since=None)  # a task borrowed CPU back
    marked_idle_but_busy = NodeState("x", "cpu", {"CPU": 2}, {"CPU": 1}, idle_since=0)
    nodes = [HEAD, busy("b"), lent, marked_idle_but_busy, starting("s")]
    assert decide([CPU], nodes, now=10_000, idle_timeout_s=1).terminate == {}


def test_the_head_is_never_terminated():
    head = NodeState("head", "cpu", {"CPU": 2}, {"CPU": 2}, idle_since=0, is_head=True)
    assert decide([CPU], [head], now=10_000, idle_timeout_s=1).terminate == {}


def test_min_workers_are_kept_and_the_longest_idle_go_first():
    t = NodeType("cpu", {"CPU": 2}, min_workers=2, max_workers=5)
    nodes = [HEAD, idle("c", 30), idle("a", 10), idle("b", 20), idle("d", 40)]
    d = decide([t], nodes, now=1000, idle_timeout_s=60)
    assert list(d.terminate) == ["a", "b"]  # c and d, idle the shortest, stay as the minimum


def test_idle_nodes_that_pending_demand_fits_on_are_kept():
    nodes = [HEAD, idle("a", 0), idle("b", 0)]
    d = decide([CPU], nodes, now=1000, idle_timeout_s=60, pending=[{"CPU": 2}])
    assert d.launch == {} and len(d.terminate) == 1


def test_pending_demand_prefers_busy_and_recently_idle_nodes():
    nodes = [HEAD, idle("long_idle", 0), idle("just_idle", 990), busy("half", available={"CPU": 1})]
    d = decide([CPU], nodes, now=1000, idle_timeout_s=60, pending=[{"CPU": 1}])
    assert list(d.terminate) == ["long_idle"]  # the task lands on "half"
    d = decide([CPU], nodes, now=1000, idle_timeout_s=60, pending=[{"CPU": 2}])
    assert list(d.terminate) == ["long_idle"]  # the task lands on "just_idle"


def test_workers_above_max_workers_go_when_idle_without_waiting_for_the_timeout():
    t = NodeType("cpu", {"CPU": 2}, max_workers=1)
    d = decide([t], [HEAD, idle("a", 990), idle("b", 995), busy("c")], now=1000, idle_timeout_s=300)
    assert list(d.terminate) == ["a", "b"] and "above its max_workers (1)" in d.terminate["a"]
    d = decide([CPU], [HEAD, idle("a", 990), busy("b")], now=1000, idle_timeout_s=300, max_workers=1)
    assert list(d.terminate) == ["a"] and "above max_workers (1)" in d.terminate["a"]


def test_idle_workers_of_a_type_no_longer_in_the_config_go_after_the_timeout():
    d = decide([CPU], [HEAD, idle("old", 0, "retired")], now=1000, idle_timeout_s=60)
    assert list(d.terminate) == ["old"]


# -- inputs -----------------------------------------------------------------------------------


def test_a_starting_node_that_has_not_reported_uses_its_types_resources():
    d = decide([GPU], [HEAD, starting("s", "gpu")], now=0, pending=[{"GPU": 1}])
    assert d.is_noop


def test_placement_group_reservations_are_not_counted_as_extra_capacity():
    # A committed bundle shows as CPU_group_* on top of the node's CPU; it is the same CPU.
    node = NodeState("a", "cpu", {"CPU": 2, "CPU_group_x": 2}, {"CPU": 0, "CPU_group_x": 2})
    assert decide([CPU], [HEAD, node], now=0, pending=[{"CPU": 1}]).launch == {"cpu": 1}


def test_bad_inputs_fail_with_the_field_named():
    with pytest.raises(ValueError, match="min_workers <= max_workers"):
        NodeType("cpu", {"CPU": 2}, min_workers=3, max_workers=2)
    with pytest.raises(ValueError, match="'CPU' must be a non-negative number"):
        NodeType("cpu", {"CPU": -1}, max_workers=1)
    with pytest.raises(ValueError, match="pending demand: resource 'CPU'"):
        decide([CPU], [HEAD], now=0, pending=[{"CPU": "one"}])
    with pytest.raises(ValueError, match="max_workers must be >= 0"):
        decide([CPU], [HEAD], now=0, max_workers=-1)
    with pytest.raises(ValueError, match="upscaling_speed must be > 0"):
        decide([CPU], [HEAD], now=0, upscaling_speed=0)


def test_inputs_are_not_changed_and_a_mapping_of_types_works_too():
    nodes = [HEAD, busy("a", available={"CPU": 1}), idle("b", 0)]
    pending = [{"CPU": 1}, {"CPU": 2}]
    groups = [PlacementGroupDemand([{"CPU": 1}] * 2, "STRICT_SPREAD")]
    before = copy.deepcopy((nodes, pending, groups))
    d1 = decide({"cpu": CPU}, nodes, now=500, pending=pending, placement_groups=groups, idle_timeout_s=60)
    d2 = decide([CPU], nodes, now=500, pending=pending, placement_groups=groups, idle_timeout_s=60)
    assert (nodes, pending, groups) == before and d1 == d2


def test_summary_has_a_line_per_action_and_unmet_demand():
    t = NodeType("cpu", {"CPU": 2}, min_workers=1, max_workers=2)
    d = decide([t], [HEAD], now=0, pending=[{"CPU": 2}] * 3 + [{"GPU": 1}])
    assert d.summary() == [
        "launch 2 x cpu (demand: 1, min_workers: 1)",
        "infeasible task or actor {'GPU': 1}: no node type and no node has 'GPU' at all",
        ("waiting task or actor {'CPU': 2}: no node has free capacity for it, and no node can be launched "
         "for it: node type 'cpu' is at its max_workers (2)"),
    ]


def test_invariants_hold_on_random_snapshots():
    """Within the limits, never a node with work terminated, never below min_workers."""
    rng = random.Random(7)
    for _ in range(300):
        types = {}
        for name in rng.sample(["a", "b", "c", "d"], rng.randint(1, 4)):
            res = {"CPU": rng.choice([1, 2, 4, 8])}
            if rng.random() < 0.3:
                res["GPU"] = rng.choice([1, 2])
            hi = rng.randint(0, 6)
            types[name] = NodeType(name, res, max_workers=hi, min_workers=rng.randint(0, hi))
        cap = rng.choice([None, 0, 3, 8, 20])
        nodes = [NodeState("head", "head", {"CPU": 2}, {"CPU": rng.choice([0, 1, 2])}, is_head=True)]
        for i in range(rng.randint(0, 10)):
            t = rng.choice([*types.values()])
            state = rng.choice(["busy", "idle", "starting"])
            if state == "starting":
                nodes.append(NodeState(f"n{i}", t.name, starting=True))
            elif state == "idle":
                nodes.append(NodeState(f"n{i}", t.name, dict(t.resources), dict(t.resources),
                                       idle_since=rng.uniform(0, 1000)))
            else:
                nodes.append(NodeState(f"n{i}", t.name, dict(t.resources), {"CPU": 0}))
        pending = [{"CPU": rng.choice([0.5, 1, 2, 3, 16])} for _ in range(rng.randint(0, 12))]
        pending += [{"GPU": 1}] * rng.randint(0, 2)
        groups = [PlacementGroupDemand([{"CPU": 1}] * rng.randint(1, 4), rng.choice(
            ["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"])) for _ in range(rng.randint(0, 2))]
        kwargs = {"now": 1000, "pending": pending, "placement_groups": groups, "max_workers": cap,
                  "requested": [{"CPU": 1}] * rng.randint(0, 3), "idle_timeout_s": 300,
                  "upscaling_speed": rng.choice([None, 0.5, 1.0])}
        d = decide(types, nodes, **kwargs)
        assert d == decide(types, nodes, **kwargs)  # the same snapshot, the same decision
        workers = [n for n in nodes if not n.is_head]
        assert set(d.launch) <= set(types)
        if cap is not None and len(workers) <= cap:
            assert len(workers) + sum(d.launch.values()) <= cap
        by_id = {n.node_id: n for n in nodes}
        for t in types.values():
            have = sum(1 for n in workers if n.node_type == t.name)
            if have <= t.max_workers:
                assert have + d.launch.get(t.name, 0) <= t.max_workers
            gone = sum(1 for i in d.terminate if by_id[i].node_type == t.name)
            if have <= t.max_workers:
                assert have + d.launch.get(t.name, 0) - gone >= min(t.min_workers, have), (t, d)
        for node_id in d.terminate:
            n = by_id[node_id]
            assert not n.is_head and not n.starting and n.idle_since is not None and n.available == n.total
