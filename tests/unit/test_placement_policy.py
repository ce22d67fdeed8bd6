"""Where placement-group bundles go: the control store's pure policy."""

from runtime.gcs.placement import choose_nodes

NODES = {"a": {"CPU": 2.0}, "b": {"CPU": 2.0}, "c": {"CPU": 1.0, "GPU": 1.0}}


def test_pack_fills_one_node_before_the_next():
    placed, _ = choose_nodes([{"CPU": 1}] * 3, "PACK", NODES)
    assert placed == ["a", "a", "b"]


def test_strict_pack_needs_one_node_for_everything():
    assert choose_nodes([{"CPU": 1}, {"CPU": 1}], "STRICT_PACK", NODES)[0] == ["a", "a"]
    placed, why = choose_nodes([{"CPU": 2}, {"CPU": 1}], "STRICT_PACK", NODES)
    assert placed is None and "STRICT_PACK" in why


def test_spread_prefers_unused_nodes_and_falls_back_to_sharing():
    assert choose_nodes([{"CPU": 1}] * 3, "SPREAD", NODES)[0] == ["a", "b", "c"]
    assert choose_nodes([{"CPU": 1}] * 4, "SPREAD", NODES)[0] == ["a", "b", "c", "a"]


def test_strict_spread_needs_a_node_per_bundle():
    assert choose_nodes([{"CPU": 1}] * 3, "STRICT_SPREAD", NODES)[0] == ["a", "b", "c"]
    placed, why = choose_nodes([{"CPU": 1}] * 4, "STRICT_SPREAD", NODES)
    assert placed is None and "needs 4 nodes" in why and "has 3" in why


def test_custom_resources_and_nothing_fits():
    assert choose_nodes([{"GPU": 1}], "PACK", NODES)[0] == ["c"]
    placed, why = choose_nodes([{"GPU": 2}], "PACK", NODES)
    assert placed is None and "bundle 0" in why


def test_available_is_not_changed_by_the_policy():
    avail = {"a": {"CPU": 1.0}}
    choose_nodes([{"CPU": 1}], "PACK", avail)
    assert avail == {"a": {"CPU": 1.0}}
