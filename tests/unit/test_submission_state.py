"""The plain state of task submission, without processes: SchedulingQueue, ActorChannel,
DependencyResolver and the Countdown a blocked get waits on."""

from __future__ import annotations

import threading

from runtime._core.actor_task_submitter import ActorChannel
from runtime._core.dependency_resolver import DependencyResolver
from runtime._core.memory_store import MemoryStore
from runtime._core.normal_task_submitter import MAX_LEASE_REQUESTS, PIPELINE_BUDGET_S, Lease, SchedulingQueue
from runtime._core.object_reader import Countdown
from runtime._core.object_ref import ObjectRef
from runtime._core.task_manager import TaskManager
from runtime._core.task_spec import TaskSpec, return_ids

ME, OTHER = "unix:/me", "unix:/other"


def _spec(tid: bytes, **kw) -> TaskSpec:
    return TaskSpec(task_id=tid, name="f", return_ids=return_ids(tid, 1), **kw)


# -- SchedulingQueue ----------------------------------------------------------------------------
def _lease(sq: SchedulingQueue, node: str, n: int) -> Lease:
    reply = {"lease_id": n, "worker_id": f"w{n}", "address": f"unix:/w{n}", "gpus": [], "node_id": node}
    lease = Lease(reply, conn=None, sq=sq, nm=None)
    sq.leases.append(lease)
    return lease


def test_lease_requests_follow_the_queue_up_to_a_cap():
    sq = SchedulingQueue("k", {"CPU": 1.0}, {})
    assert sq.leases_wanted() == 0
    sq.queue.extend(_spec(bytes([i]) * 24) for i in range(3))
    assert sq.leases_wanted() == 3
    sq.requesting = 2
    assert sq.leases_wanted() == 1
    sq.requesting = 5  # more in flight than tasks queued: never negative
    assert sq.leases_wanted() == 0
    sq.requesting = 0
    sq.queue.extend(_spec(b"x" * 23 + bytes([i])) for i in range(MAX_LEASE_REQUESTS * 2))
    assert sq.leases_wanted() == MAX_LEASE_REQUESTS


def test_dropped_lease_is_dead_and_gone_once():
    sq = SchedulingQueue("k", {}, {})
    a, b = _lease(sq, "n1", 1), _lease(sq, "n1", 2)
    sq.drop(a)
    sq.drop(a)  # dropped twice (connection closed after it went back): no error
    assert a.dead and sq.leases == [b]


def test_idle_leases_on_a_node():
    sq = SchedulingQueue("k", {}, {})
    idle, busy, other = _lease(sq, "n1", 1), _lease(sq, "n1", 2), _lease(sq, "n2", 3)
    busy.inflight.append((_spec(b"b" * 24), 0.0))
    assert sq.idle_leases_on("n1") == [idle]
    assert sq.idle_leases_on("n2") == [other]
    assert not sq.stealable()
    busy.inflight.append((_spec(b"c" * 24), 0.0))  # a second task waits behind the first
    assert sq.stealable() and busy.running().task_id == b"b" * 24


def test_pipeline_depth_follows_the_time_tasks_take():
    sq = SchedulingQueue("k", {"CPU": 1.0}, {})
    assert sq.depth(16) == 1  # nothing timed yet: one at a time
    sq.timed(0.0001)  # 0.1 ms a task: as many as allowed
    assert sq.depth(16) == 16 and sq.depth(4) == 4 and sq.depth(1) == 1
    for _ in range(30):  # tasks became 1 ms: about PIPELINE_BUDGET_S of them
        sq.timed(0.001)
    assert sq.depth(16) == int(PIPELINE_BUDGET_S / 0.001)
    for _ in range(30):  # long tasks: none queued behind another
        sq.timed(0.5)
    assert sq.depth(16) == 1
    spread = SchedulingQueue("s", {"CPU": 1.0}, {}, "SPREAD")
    spread.timed(0.0001)
    assert spread.depth(16) == 1  # each SPREAD task is placed on its own


# -- ActorChannel -------------------------------------------------------------------------------
def _state(version: int, state: str = "ALIVE", address: str = "unix:/a1", **kw) -> dict:
    return {"version": version, "num_restarts": kw.get("num_restarts", 0), "state": state,
            "reason": kw.get("reason", ""), "address": address, "node_id": kw.get("node_id", "n1")}


def test_actor_state_only_moves_forward():
    ch = ActorChannel("A", 0)
    assert ch.apply_state(**_state(2))
    assert (ch.state, ch.address, ch.node_id, ch.version) == ("ALIVE", "unix:/a1", "n1", 2)
    # A subscribe reply older than an update already applied is ignored.
    assert not ch.apply_state(**_state(1, "PENDING_CREATION", ""))
    assert ch.state == "ALIVE"
    assert ch.apply_state(**_state(3, "DEAD", "", reason="killed"))
    assert not ch.apply_state(**_state(9))  # dead is final
    assert (ch.state, ch.reason) == ("DEAD", "killed")


def test_new_address_drops_the_connection_same_address_keeps_it():
    ch = ActorChannel("A", 0)
    ch.apply_state(**_state(1))
    ch.conn = conn = object()
    ch.apply_state(**_state(2, "ALIVE", "unix:/a1"))
    assert ch.conn is conn
    ch.apply_state(**_state(3, "RESTARTING", ""))  # no address while restarting: kept
    assert ch.conn is conn and ch.address == "unix:/a1"
    ch.apply_state(**_state(4, "ALIVE", "unix:/a2", num_restarts=1))
    assert ch.conn is None and ch.address == "unix:/a2" and ch.num_restarts == 1


def test_lost_connection_requeues_calls_with_retries_in_order():
    ch = ActorChannel("A", 1)
    ch.apply_state(**_state(1))
    ch.conn = object()
    calls = [_spec(bytes([i]) * 24, max_retries=r) for i, r in enumerate((1, 0, -1, 1))]
    calls[3].cancelled = True
    for s in calls:
        ch.inflight[s.task_id] = s
    queued = _spec(b"q" * 24)
    ch.queue.append(queued)
    failed = ch.conn_lost(TaskManager.consume_retry)
    assert failed == [calls[1], calls[3]]  # no retries left; cancelled
    assert list(ch.queue) == [calls[0], calls[2], queued]  # retried ones first, in submission order
    assert ch.inflight == {} and ch.conn is None and ch.address == "" and ch.state == "UNKNOWN"
    assert calls[0].max_retries == 0 and calls[2].max_retries == -2


def test_lost_connection_while_restarting_keeps_the_state():
    ch = ActorChannel("A", 0)
    ch.apply_state(**_state(1, "RESTARTING", ""))
    assert ch.conn_lost(TaskManager.consume_retry) == [] and ch.state == "RESTARTING"
    assert "max_task_retries=0" in ch.died_reason()
    ch.reason = "its node died"
    assert ch.died_reason() == "its node died"


def test_out_of_scope_kills_once_and_only_when_idle():
    ch = ActorChannel("A", 0)
    assert not ch.out_of_scope_now()  # handles still alive
    ch.handle_gone = True
    ch.inflight[b"t"] = _spec(b"t" * 24)
    assert not ch.out_of_scope_now()  # a call is still running
    ch.inflight.clear()
    assert ch.out_of_scope_now() and ch.state == "DEAD"
    assert not ch.out_of_scope_now()  # already dead: not killed twice


# -- DependencyResolver -------------------------------------------------------------------------
def _resolver():
    store = MemoryStore()
    posted = []
    return DependencyResolver(store, ME, lambda fn, *a: posted.append((fn, a))), store, posted


def _with_deps(*refs: ObjectRef, **kw) -> TaskSpec:
    return _spec(b"t" * 24, deps=list(refs), **kw)


def _ref(oid: bytes, owner: str) -> ObjectRef:
    # ObjectRef counts itself in the current worker's table; these only need id and owner.
    r = ObjectRef.__new__(ObjectRef)
    r._id, r._owner = oid, owner
    return r


def test_waits_only_for_dependencies_we_own():
    res, store, posted = _resolver()
    mine, theirs = _ref(b"m" * 28, ME), _ref(b"o" * 28, OTHER)
    store.create_pending(mine._id)
    spec = _with_deps(mine, theirs)
    ran = []
    assert res.pending(spec)
    res.when_ready(spec, ran.append)
    assert ran == [] and posted == []
    store.set_inline(mine._id, b"m", [])
    assert ran == [] and len(posted) == 1  # readiness comes back through the loop
    fn, args = posted.pop()
    fn(*args)
    assert ran == [spec] and not res.pending(spec)
    res.when_ready(spec, ran.append)  # all ready: at once
    assert ran == [spec, spec]


def test_runs_once_when_the_last_of_several_is_ready():
    res, store, posted = _resolver()
    refs = [_ref(bytes([i]) * 28, ME) for i in range(3)]
    for r in refs:
        store.create_pending(r._id)
    ran = []
    res.when_ready(_with_deps(*refs), ran.append)
    for r in refs:
        store.set_inline(r._id, b"", [])
    for fn, args in posted:
        fn(*args)
    assert len(ran) == 1


def test_owned_failed_dependency_is_the_tasks_error():
    res, store, _ = _resolver()
    good, bad, theirs = _ref(b"g" * 28, ME), _ref(b"b" * 28, ME), _ref(b"x" * 28, OTHER)
    err = ValueError("upstream")
    store.set_inline(good._id, b"", [])
    store.set_error(bad._id, err)
    store.set_error(theirs._id, KeyError())  # a borrowed value's error is the worker's to raise
    assert res.error(_with_deps(good, theirs)) is None
    assert res.error(_with_deps(good, theirs, bad)) is err


def test_message_deps_inline_mapped_or_fetched():
    res, store, _ = _resolver()
    small, big_here, big_away, theirs = (_ref(b"s" * 28, ME), _ref(b"h" * 28, ME), _ref(b"a" * 28, ME),
                                         _ref(b"t" * 28, OTHER))
    store.set_inline(small._id, b"meta", [b"b1", b"b2"])
    store.set_shm(big_here._id, 1000, "n1")
    store.set_shm(big_away._id, 1000, "n2")
    spec = _with_deps(small, big_here, big_away, theirs, args_bufs=[b"arg"])
    deps, bufs = res.message_deps(spec, "n1")
    assert [d[0] for d in deps] == ["i", "s", "r", "r"]
    assert deps[0] == ["i", small._id, ME, b"meta", 2]
    assert bufs == [b"arg", b"b1", b"b2"]  # the arguments' buffers first, then the inlined values'


# -- Countdown ----------------------------------------------------------------------------------
def test_countdown_releases_on_the_last_needed():
    c = Countdown(3)
    c.one_ready()
    c.one_ready()
    assert not c.done() and not c.wait(0)
    c.one_ready()
    assert c.done()
    c.one_ready()  # more ready than needed: harmless


def test_countdown_of_one_tolerates_several_ready():
    c = Countdown(1)
    c.one_ready()
    c.one_ready()
    assert c.done()


def test_countdown_wakes_a_blocked_waiter():
    c = Countdown(2)
    threads = [threading.Thread(target=c.one_ready) for _ in range(2)]
    for t in threads:
        t.start()
    assert c.wait(None)
    for t in threads:
        t.join()
