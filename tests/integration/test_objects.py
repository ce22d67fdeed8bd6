"""Objects on a real embedded cluster: put/get, zero-copy numpy, immutability,
reference counting, spilling, store limits and custom serializers."""

from __future__ import annotations

import gc
import sys
import threading
from multiprocessing.pool import ThreadPool

import cloudpickle
import numpy as np
import pytest

import runtime
from runtime._testing.pytest_plugin import start_runtime
from runtime._testing.sync import SignalActor, wait_for
from runtime.exceptions import ObjectStoreFullError
from runtime.util import state

cloudpickle.register_pickle_by_value(sys.modules[__name__])

Signal = runtime.remote(num_cpus=0)(SignalActor)
MB = 1024 * 1024


def _object_ids():
    return {entry["object_id"] for entry in state.list_objects()}


def _entry(object_hex):
    for entry in state.list_objects():
        if entry["object_id"] == object_hex:
            return entry
    return None


@runtime.remote
def total(arr):
    return float(arr.sum())


@runtime.remote
def wait_then_sum(signal_handle, container):
    runtime.get(signal_handle.wait.remote())
    return float(runtime.get(container[0]).sum())


@runtime.remote
def wait_signal(signal_handle):
    runtime.get(signal_handle.wait.remote())
    return "released"


@runtime.remote
def sum_after(_dependency, arr):
    return float(arr.sum())


# -- put / get -------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [0, -1.5, "text", b"\x00bytes", None, [1, [2, {"k": (3,)}]], {"a": {1, 2}}, 10**40],
)
def test_get_returns_equal_value_when_put(shared_runtime, value):
    assert runtime.get(runtime.put(value), timeout=30) == value


def test_large_bytes_roundtrip_when_put(shared_runtime):
    payload = bytes(range(256)) * (8 * 1024)  # 2 MiB
    assert runtime.get(runtime.put(payload), timeout=30) == payload


def test_numpy_array_read_only_and_zero_copy_when_got(shared_runtime):
    arr = np.arange(2 * MB // 8, dtype=np.float64)
    ref = runtime.put(arr)
    first = runtime.get(ref, timeout=30)
    second = runtime.get(ref, timeout=30)
    np.testing.assert_array_equal(first, arr)
    assert first.flags.writeable is False
    with pytest.raises(ValueError):
        first[0] = 42.0
    assert np.shares_memory(first, second), "two gets of one object should share memory"
    assert not np.shares_memory(first, arr), "put should copy into the store"


def test_numpy_array_passed_to_task_when_large(shared_runtime):
    arr = np.ones(MB, dtype=np.float32)
    assert runtime.get(total.remote(arr), timeout=30) == float(MB)
    assert runtime.get(total.remote(runtime.put(arr)), timeout=30) == float(MB)


def test_stored_object_unchanged_when_got_copy_mutated(shared_runtime):
    ref = runtime.put([1, 2, 3])
    got = runtime.get(ref, timeout=30)
    got.append(4)
    got[0] = 100
    assert runtime.get(ref, timeout=30) == [1, 2, 3]


def test_stored_object_unchanged_when_original_mutated_after_put(shared_runtime):
    original = {"k": [1]}
    ref = runtime.put(original)
    original["k"].append(2)
    assert runtime.get(ref, timeout=30) == {"k": [1]}


# -- reference counting ------------------------------------------------------------


def test_list_objects_entry_has_documented_fields(shared_runtime):
    ref = runtime.put(np.zeros(MB // 8))
    entry = wait_for(lambda: _entry(ref.hex()), timeout=10, what="the object is listed")
    for key in ("object_id", "size_bytes", "owner", "reference_kinds", "spilled"):
        assert key in entry, f"list_objects entry lacks {key!r}: {entry}"
    assert isinstance(entry["object_id"], str)
    assert entry["size_bytes"] >= MB
    assert isinstance(entry["reference_kinds"], list)
    assert entry["spilled"] is False
    del ref


def test_object_freed_when_last_ref_deleted(shared_runtime):
    ref = runtime.put(np.zeros(MB // 8))
    object_hex = ref.hex()
    wait_for(lambda: object_hex in _object_ids(), timeout=10, what="the object is listed")
    del ref
    gc.collect()
    wait_for(lambda: object_hex not in _object_ids(), timeout=10,
             what=f"object {object_hex} freed after its last ref was deleted")


def test_task_result_freed_when_last_ref_deleted(shared_runtime):
    @runtime.remote
    def make():
        return np.ones(MB // 8)

    ref = make.remote()
    runtime.get(ref, timeout=30)
    object_hex = ref.hex()
    wait_for(lambda: object_hex in _object_ids(), timeout=10, what="the result is listed")
    del ref
    gc.collect()
    wait_for(lambda: object_hex not in _object_ids(), timeout=10,
             what=f"task result {object_hex} freed after its last ref was deleted")


def _reused_files():
    return sum(store["reused_files_total"] for store in state.object_store_stats())


def _put_and_free(value):
    ref = runtime.put(value)
    object_hex = ref.hex()
    del ref
    gc.collect()
    wait_for(lambda: object_hex not in _object_ids(), timeout=10, what=f"object {object_hex} freed")


def test_freed_file_reused_when_no_process_maps_it(shared_runtime):
    n = 8 * MB // 8
    _put_and_free(np.full(n, 1.0))
    before = _reused_files()
    ref = runtime.put(np.full(n, 2.0))
    assert _reused_files() == before + 1
    arr = runtime.get(ref, timeout=30)
    assert arr.shape == (n,) and arr[0] == arr[n // 2] == arr[-1] == 2.0


def test_mapped_value_unchanged_when_its_object_is_freed_and_same_size_put(shared_runtime):
    n = 8 * MB // 8
    ref = runtime.put(np.full(n, 1.0))
    held = runtime.get(ref, timeout=30)  # a zero-copy view of the object's file
    object_hex = ref.hex()
    del ref
    gc.collect()
    wait_for(lambda: object_hex not in _object_ids(), timeout=10, what=f"object {object_hex} freed")
    before = _reused_files()
    other = runtime.put(np.full(n, 3.0))
    assert runtime.get(other, timeout=30)[n // 2] == 3.0
    assert _reused_files() == before, "a file still mapped by a reader was handed to a writer"
    assert held[0] == held[n // 2] == held[-1] == 1.0


def test_ref_held_by_pending_task_keeps_object_alive(shared_runtime):
    sig = Signal.remote()
    blocker = wait_signal.remote(sig)
    data = runtime.put(np.full(MB // 8, 2.0))
    object_hex = data.hex()
    result = sum_after.remote(blocker, data)  # pending: waits for blocker
    del data
    gc.collect()
    assert object_hex in _object_ids()
    runtime.get(sig.send.remote(), timeout=30)
    assert runtime.get(result, timeout=30) == 2.0 * (MB // 8)
    del result, blocker
    gc.collect()
    wait_for(lambda: object_hex not in _object_ids(), timeout=10,
             what="the argument freed once the task finished")
    runtime.kill(sig)


def test_ref_nested_in_task_argument_keeps_object_alive(shared_runtime):
    sig = Signal.remote()
    data = runtime.put(np.full(1000, 3.0))
    result = wait_then_sum.remote(sig, [data])
    del data
    gc.collect()
    runtime.get(sig.send.remote(), timeout=30)
    assert runtime.get(result, timeout=30) == 3000.0
    runtime.kill(sig)


def test_ref_nested_in_put_object_keeps_inner_object_alive(shared_runtime):
    inner = runtime.put(np.full(MB // 8, 5.0))
    inner_hex = inner.hex()
    outer = runtime.put({"inner": [inner]})
    del inner
    gc.collect()
    assert inner_hex in _object_ids()
    got_inner = runtime.get(outer, timeout=30)["inner"][0]
    arr = runtime.get(got_inner, timeout=30)
    assert arr[0] == 5.0 and arr.shape == (MB // 8,)
    del arr, got_inner, outer
    gc.collect()
    wait_for(lambda: inner_hex not in _object_ids(), timeout=10,
             what="the inner object freed with the outer one")


# -- serializers -----------------------------------------------------------------------


class PoolHolder:
    """The book's example: a class holding a thread pool, which cannot pickle."""

    def __init__(self, threads, friends):
        self.threads = threads
        self.friends = friends
        self.pool = ThreadPool(threads)


def _serialize_holder(holder):
    return {"threads": holder.threads, "friends": holder.friends}


def _deserialize_holder(params):
    return PoolHolder(params["threads"], params["friends"])


def test_register_serializer_allows_unpicklable_class(shared_runtime):
    holder = PoolHolder(2, ["boo", "boris"])
    restored = None
    try:
        with pytest.raises(Exception):  # noqa: B017 - any serialization error
            runtime.put(holder)
        runtime.util.register_serializer(
            PoolHolder, serializer=_serialize_holder, deserializer=_deserialize_holder
        )
        try:
            restored = runtime.get(runtime.put(holder), timeout=30)
            assert isinstance(restored, PoolHolder)
            assert restored.threads == 2
            assert restored.friends == ["boo", "boris"]
            assert restored.pool is not holder.pool
        finally:
            runtime.util.deregister_serializer(PoolHolder)
        with pytest.raises(Exception):  # noqa: B017 - deregistered again
            runtime.put(holder)
    finally:
        holder.pool.terminate()
        if restored is not None:
            restored.pool.terminate()


class LockHolder:
    def __init__(self):
        self.name = "holder"
        self.guard = threading.Lock()


def test_inspect_serializability_reports_unpicklable_member(shared_runtime):
    ok, failures = runtime.util.inspect_serializability({"a": [1, 2]}, name="plain")
    assert ok is True
    assert not failures

    ok, failures = runtime.util.inspect_serializability(LockHolder(), name="holder")
    assert ok is False
    assert failures, "no failure reported for an object holding a lock"
    assert any("guard" in str(f) or "lock" in str(f).lower() for f in failures), failures


# -- store capacity -------------------------------------------------------------------


@pytest.mark.timeout(180)
def test_objects_spilled_and_restored_when_store_full(ray_start_spill):
    n = 100 * MB // 8
    refs = [runtime.put(np.full(n, float(i + 1))) for i in range(4)]
    hexes = {ref.hex() for ref in refs}

    entries = [e for e in state.list_objects() if e["object_id"] in hexes]
    assert len(entries) == 4, entries
    assert any(e["spilled"] for e in entries), f"nothing spilled: {entries}"

    for i, ref in enumerate(refs):
        arr = runtime.get(ref, timeout=60)
        assert arr.shape == (n,)
        assert arr[0] == arr[-1] == arr[n // 2] == float(i + 1)
        del arr
        gc.collect()


@pytest.fixture
def ray_start_spill(tmp_path, orrery_leak_check):
    with start_runtime(
        num_cpus=1,
        object_store_memory=200 * MB,
        _system_config={"object_spilling_directory": str(tmp_path)},
    ):
        yield tmp_path


@pytest.mark.parametrize(
    "ray_start", [{"num_cpus": 1, "object_store_memory": 100 * MB}], indirect=True
)
def test_put_raises_object_store_full_error_when_object_larger_than_store(ray_start):
    with pytest.raises(ObjectStoreFullError):
        runtime.put(np.zeros(150 * MB // 8))
    # The store still works.
    assert runtime.get(runtime.put("small"), timeout=30) == "small"


def _mapped_shm_rss() -> int:
    """In a task: the most of one shared-memory object mapping that is in this process's page
    tables (its Rss in /proc/self/smaps), in bytes."""
    best, current = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()
            if head and "-" in head[0] and len(head) >= 5:  # a mapping's first line
                current = len(head) >= 6 and head[5].startswith("/dev/shm/orrery-")
            elif current and head[0] == "Rss:":
                best = max(best, int(head[1]) * 1024)
    return best


@pytest.mark.parametrize("ray_start", [{"num_cpus": 1}], indirect=True)
def test_the_next_task_on_a_large_object_finds_it_mapped(ray_start):
    """A worker keeps the large shared-memory arguments of its last task mapped: the next task
    on the same object (one CPU: the same worker) finds its pages in its page tables already,
    as in a Ray worker, instead of faulting 100 MiB in again."""
    import runtime

    @runtime.remote
    def touch(a):
        before = _mapped_shm_rss()
        import os
        return before, int(a[::4096].sum()), os.getpid()

    ref = runtime.put(np.ones(100 * MB, dtype=np.uint8))
    first, second = runtime.get(touch.remote(ref)), runtime.get(touch.remote(ref))
    assert first[2] == second[2] and first[1] == second[1] == 100 * MB // 4096
    assert first[0] < 10 * MB  # a fresh mapping: nothing of it faulted in yet
    assert second[0] >= 99 * MB, second[0]  # the first task's mapping, pages and all

    @runtime.remote
    def other():
        return _mapped_shm_rss()

    assert runtime.get(other.remote()) < 10 * MB  # a task that does not use it: the mapping is gone
