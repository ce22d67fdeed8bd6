"""runtime.util.metrics without a cluster: Ray 2.60's arguments and checks, and what a process
records into its registry (what it reports to its node manager)."""

from __future__ import annotations

import pickle
import warnings

import pytest

from runtime.util import metrics
from runtime.util.metrics import Counter, Gauge, Histogram


def _family(name: str) -> dict:
    metrics.registry.dirty = True
    return next(f for f in metrics.registry.snapshot() if f["name"] == name)


def test_counter_gauge_histogram_record_per_tag_values():
    c = Counter("unit_requests", "requests served", tag_keys=("route", "code"))
    c.set_default_tags({"code": "200"})
    c.inc(tags={"route": "/a"})
    c.inc(2.5, tags={"route": "/a"})
    c.inc(tags={"route": "/b", "code": "500"})
    fam = _family("unit_requests")
    assert fam["kind"] == "counter" and fam["tag_keys"] == ["route", "code"]
    assert sorted(map(tuple, ((tuple(k), v) for k, v in fam["samples"]))) == [
        (("/a", "200"), 3.5), (("/b", "500"), 1.0)]

    g = Gauge("unit_money", tag_keys=("actor_name",)).set_default_tags({"actor_name": "bank"})
    g.set(10)
    g.set(7)
    g.set(None)  # Ray ignores None
    assert _family("unit_money")["samples"] == [[["bank"], 7.0]]

    h = Histogram("unit_latency", "seconds", boundaries=[0.1, 1.0])
    for v in (0.05, 0.1, 0.5, 3.0):
        h.observe(v)
    # counts per bucket (<=0.1, <=1.0, above), then sum and count
    assert _family("unit_latency")["samples"] == [[[], [2.0, 1.0, 1.0, 3.65, 4.0]]]
    assert h.info == {"name": "unit_latency", "description": "seconds", "tag_keys": (), "default_tags": {},
                      "boundaries": [0.1, 1.0]}


def test_snapshot_only_after_a_change():
    Counter("unit_changes").inc()
    assert metrics.registry.snapshot() is not None
    assert metrics.registry.snapshot() is None  # nothing new to report
    Counter("unit_changes").inc()  # the same family, by name
    assert [f for f in metrics.registry.snapshot() if f["name"] == "unit_changes"][0]["samples"] == [[[], 2.0]]


@pytest.mark.parametrize("make, error, text", [
    (lambda: Counter(""), ValueError, "Empty name is not allowed"),
    (lambda: Counter("x", tag_keys=["a"]), TypeError, "tag_keys should be a tuple type"),
    (lambda: Counter("x", tag_keys=(1,)), TypeError, "Tag keys must be str"),
    (lambda: Counter("x", tag_keys=("bad-key",)), ValueError, "Invalid tag key 'bad-key'"),
    (lambda: Histogram("x"), ValueError, "boundaries argument should be provided"),
    (lambda: Histogram("x", boundaries=[1, 0]), ValueError, "Invalid `boundaries` argument at index 1"),
    (lambda: Histogram("x", boundaries=[2, 1]), ValueError, "strictly increasing"),
    (lambda: Counter("x", tag_keys=("a",)).set_default_tags({"b": "1"}), ValueError, "Unrecognized tag key b"),
    (lambda: Counter("x", tag_keys=("a",)).set_default_tags({"a": 1}), TypeError, "Tag values must be str"),
    (lambda: Counter("x", tag_keys=("a",)).inc(), ValueError, "Missing value for tag key(s): a"),
    (lambda: Counter("x", tag_keys=("a",)).inc(tags={"a": "1", "z": "2"}), ValueError, "Unrecognized tag key z"),
    (lambda: Counter("y").inc(0), ValueError, "value must be >0, got 0"),
    (lambda: Counter("y").inc("1"), TypeError, "value must be int or float"),
    (lambda: Gauge("x_gauge").set("1"), TypeError, "value must be int or float"),
])
def test_bad_arguments_are_rays_errors(make, error, text):
    Counter("x", tag_keys=("a",))
    with pytest.raises(error) as e:
        make()
    assert text in str(e.value)


def test_a_name_prometheus_cannot_take_is_warned_and_discarded_as_in_ray():
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        c = Counter("has-dash")
    assert "Invalid metric name: has-dash" in str(w[0].message)
    c.inc()
    metrics.registry.dirty = True
    assert all(f["name"] != "has-dash" for f in metrics.registry.snapshot())


def test_a_name_declared_again_another_way_replaces_the_old_family():
    old = Counter("unit_redeclared", tag_keys=("a",))
    old.inc(tags={"a": "1"})
    new = Gauge("unit_redeclared")  # a notebook cell changed and run again
    new.set(5)
    old.inc(tags={"a": "1"})  # the old object records into nothing
    fam = _family("unit_redeclared")
    assert fam["kind"] == "gauge" and fam["samples"] == [[[], 5.0]]


def test_pickled_metric_is_built_again_by_name_as_in_ray_2_60():
    h = Histogram("unit_pickled", "d", boundaries=[1.0], tag_keys=("k",)).set_default_tags({"k": "v"})
    back = pickle.loads(pickle.dumps(h))
    assert back.info == {"name": "unit_pickled", "description": "d", "tag_keys": ("k",), "default_tags": {},
                         "boundaries": [1.0]}
    back.observe(2.0, tags={"k": "w"})
    assert _family("unit_pickled")["samples"] == [[["w"], [0.0, 1.0, 2.0, 1.0]]]
