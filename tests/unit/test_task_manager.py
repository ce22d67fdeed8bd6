"""TaskManager (pending tasks, retries, lineage) and object_recovery.plan, without processes."""

from __future__ import annotations

import pickle

from runtime._core import object_recovery as rec
from runtime._core.memory_store import MemoryStore
from runtime._core.task_manager import CANCELLED, FAILED, RETRY, TaskManager
from runtime._core.task_spec import ActorTaskSpec, TaskSpec, return_ids
from runtime.exceptions import TaskError


def _spec(tid: bytes = b"t" * 24, n: int = 1, **kw) -> TaskSpec:
    cls = ActorTaskSpec if "actor_id" in kw else TaskSpec
    return cls(task_id=tid, name="f", return_ids=return_ids(tid, n), **kw)


def _manager():
    store = MemoryStore()
    return TaskManager(store), store


def test_pending_until_finished_and_gone_from_the_table():
    tm, _ = _manager()
    s = _spec(n=2)
    tm.add_pending(s)
    assert all(tm.pending(o) is s for o in s.return_ids)
    assert tm.finish(s, None) is True  # nothing in shared memory: its arguments go now
    assert tm.tasks == {} and tm.pending(s.return_ids[0]) is None
    assert tm.finish(s, None) is None  # a second finish (reply after a cancel) is ignored


def test_children_of_a_parent():
    tm, _ = _manager()
    a, b, c = _spec(b"a" * 24, parent=b"p"), _spec(b"b" * 24, parent=b"q"), _spec(b"c" * 24, parent=b"p")
    for s in (a, b, c):
        tm.add_pending(s)
    assert sorted(tm.children_of(b"p")) == sorted([a.return_ids[0], c.return_ids[0]])


def test_result_in_shared_memory_keeps_lineage_until_every_kept_result_is_released():
    tm, store = _manager()
    s = _spec(n=2, max_retries=2)
    tm.add_pending(s)
    for oid in s.return_ids:
        store.set_shm(oid, 100, "node-a")
    assert tm.finish(s, None) is False  # kept: its arguments stay pinned
    assert set(tm.lineage) == set(s.return_ids)
    assert tm.forget(s.return_ids[0]) is None  # the other result still needs it
    assert tm.forget(s.return_ids[1]) is s  # now its arguments can be released
    assert tm.lineage == {}


def test_no_lineage_for_failed_actor_or_no_retry_tasks():
    for kw, err in (({"max_retries": 0}, None), ({"max_retries": 3, "actor_id": "A"}, None),
                    ({"max_retries": 3}, ValueError("x"))):
        tm, store = _manager()
        s = _spec(**kw)
        store.set_shm(s.return_ids[0], 10, "n")
        assert tm.finish(s, err) is True, kw
        assert tm.lineage == {}


def test_inline_results_keep_no_lineage():
    tm, store = _manager()
    s = _spec(max_retries=3)
    store.set_inline(s.return_ids[0], b"m", [])
    assert tm.finish(s, None) is True and tm.lineage == {}


def test_retry_after_worker_death_spends_retries_then_fails():
    tm, _ = _manager()
    s = _spec(max_retries=2)
    assert [tm.retry_after_worker_death(s) for _ in range(3)] == [RETRY, RETRY, FAILED]
    assert s.max_retries == 0
    unlimited = _spec(max_retries=-1)
    assert all(tm.retry_after_worker_death(unlimited) == RETRY for _ in range(5))
    assert unlimited.max_retries == -6  # still negative: unlimited
    cancelled = _spec(max_retries=5, cancelled=True)
    assert tm.retry_after_worker_death(cancelled) == CANCELLED and cancelled.max_retries == 5


def test_consume_retry_refuses_cancelled_and_exhausted():
    assert TaskManager.consume_retry(_spec(max_retries=0)) is False
    assert TaskManager.consume_retry(_spec(max_retries=1, cancelled=True)) is False
    s = _spec(max_retries=1)
    assert TaskManager.consume_retry(s) is True and s.max_retries == 0


class _Mine(Exception):
    pass


def _reply(err: BaseException) -> dict:
    return {"res": [("i", b"", 0, None), ("e", pickle.dumps(err), 0, None)]}


def test_exception_retry_follows_retry_exceptions():
    wrapped = TaskError("f", "tb", _Mine("boom"))
    s = _spec(max_retries=2, retry_exceptions=True)
    assert TaskManager.exception_to_retry(s, _reply(wrapped)) == "_Mine" and s.max_retries == 1
    listed = _spec(max_retries=2, retry_exceptions=[_Mine])
    assert TaskManager.exception_to_retry(listed, _reply(wrapped)) == "_Mine"
    other = _spec(max_retries=2, retry_exceptions=[KeyError])
    assert TaskManager.exception_to_retry(other, _reply(wrapped)) is None and other.max_retries == 2
    assert TaskManager.exception_to_retry(_spec(max_retries=0, retry_exceptions=True), _reply(wrapped)) is None
    assert TaskManager.exception_to_retry(_spec(max_retries=2), _reply(wrapped)) is None  # not asked for
    ok = _spec(max_retries=2, retry_exceptions=True)
    assert TaskManager.exception_to_retry(ok, {"res": [("i", b"", 0, None)]}) is None and ok.max_retries == 2


def test_resubmit_for_recovery_makes_results_pending_again():
    tm, store = _manager()
    s = _spec(n=2, max_retries=2)
    for oid in s.return_ids:
        store.set_shm(oid, 100, "node-a")
    tm.finish(s, None)
    s.lease = object()
    tm.resubmit_for_recovery(s)
    assert s.max_retries == 1 and not s.finished and s.lease is None and tm.lineage == {}
    assert not any(store.ready(o) for o in s.return_ids)


# -- object_recovery.plan -----------------------------------------------------------------------
def test_plan_for_a_lost_object():
    store = MemoryStore()
    spec = _spec(max_retries=1)
    store.set_shm(b"here", 1, "lost")
    store.set_shm(b"elsewhere", 1, "alive")
    store.set_inline(b"inline", b"m", [])
    store.set_error(b"err", ValueError())
    store.create_pending(b"pending")
    assert rec.plan(None, spec, "lost")[0] == rec.SKIP  # freed
    assert rec.plan(store.entries[b"elsewhere"], spec, "lost")[0] == rec.SKIP  # already rebuilt
    assert rec.plan(store.entries[b"inline"], spec, "lost")[0] == rec.SKIP
    assert rec.plan(store.entries[b"err"], spec, "lost")[0] == rec.SKIP
    assert rec.plan(store.entries[b"pending"], spec, "lost")[0] == rec.WAIT  # being rebuilt now
    assert rec.plan(store.entries[b"here"], spec, "lost") == (rec.RESUBMIT, "")
    action, why = rec.plan(store.entries[b"here"], None, "lost")
    assert action == rec.FAIL and "no lineage" in why
    action, why = rec.plan(store.entries[b"here"], _spec(max_retries=0), "lost")
    assert action == rec.FAIL and "no retries left" in why
