from __future__ import annotations

import pytest

from runtime.node.resources import LeaseQueue, LeaseRequest, ResourcePool, normalize


def test_acquire_release_and_gpu_ids():
    pool = ResourcePool({"CPU": 2.0, "GPU": 2.0})
    assert pool.acquire({"CPU": 1.0, "GPU": 1.0}) == [0]
    assert pool.acquire({"GPU": 1.0}) == [1]
    assert not pool.fits({"GPU": 1.0})
    pool.release({"GPU": 1.0}, [0])
    assert pool.acquire({"GPU": 1.0}) == [0]
    assert pool.available["CPU"] == 1.0


def test_queue_grants_in_order_and_lets_small_requests_pass():
    pool = ResourcePool({"CPU": 2.0})
    q = LeaseQueue(pool)
    assert q.add(LeaseRequest(1, {"CPU": 2.0}, ""))
    assert q.add(LeaseRequest(2, {"CPU": 1.0}, ""))
    assert [r.request_id for r, _ in q.grantable()] == [1]
    assert q.grantable() == []  # request 2 waits for CPU
    pool.release({"CPU": 1.0})
    assert [r.request_id for r, _ in q.grantable()] == [2]


def test_infeasible_request_is_reported_and_kept():
    q = LeaseQueue(ResourcePool({"CPU": 2.0}))
    assert q.add(LeaseRequest(1, {"CPU": 64.0}, "")) is False
    assert q.grantable() == [] and q.demand_summary() == [{"CPU": 64.0}]


def test_blocked_task_lends_cpu_so_nested_task_fits():
    pool = ResourcePool({"CPU": 1.0})
    pool.acquire({"CPU": 1.0})
    assert not pool.fits({"CPU": 1.0})
    pool.lend_cpu(1.0)
    assert pool.fits({"CPU": 1.0})
    pool.acquire({"CPU": 1.0})
    pool.reclaim_cpu(1.0)
    assert pool.available["CPU"] == -1.0  # over-committed until the nested task ends, as in Ray


@pytest.mark.parametrize("bad", [{"CPU": -1}, {"x": "1"}, {1: 1}])
def test_normalize_rejects_bad_demands(bad):
    with pytest.raises(ValueError):
        normalize(bad)
