"""What the fuzzing found, each as one deterministic example (with the cluster's token: a
peer that has it, sending what no part of the runtime sends). Each failed before its fix."""

from __future__ import annotations

import math
import os
import secrets

import psutil

from runtime._testing.sync import wait_for

from . import strategies, support
from .conftest import JOINED
from .support import RPC


def _listener(cluster, server: str, node: str = "head", unix: bool | None = None) -> support.Listener:
    for lst in cluster.listeners():
        if lst.server == server and lst.node == node and (unix is None or lst.address.startswith("unix:") == unix):
            return lst
    raise AssertionError(f"no {server} listener on the {node} node")


def _session(lst: support.Listener, token: str, info: dict | None = None):
    s = support.connect(lst)
    s.sendall(support.hello(token, info))
    return s


def test_a_node_list_sent_by_anyone_but_the_control_store_is_refused(cluster):
    """It replaced the node's peers (a newer epoch than any to come: for good), so work no
    longer spilled to the other node."""
    with _session(_listener(cluster, "node", unix=False), cluster.token) as s:
        reply = support.request(s, {"op": "nodes_changed", "nodes": [], "epoch": [1e300, 0]})
    assert reply is not None and reply["ok"] is False and "control store" in reply["err"], reply
    peers = cluster.gcs({"op": "cluster_resources"})["nodes"][cluster.procs.nodes[0]["node_id"]]["peers"]
    assert peers == [cluster.joined["node_id"]]
    cluster.run_tasks()


def test_a_node_registered_over_a_connection_dies_with_it(cluster):
    """It stayed alive in the node table for good (the close was looked up by the hello's
    node id), and its resources with it."""
    node_id = secrets.token_hex(16)
    with _session(_listener(cluster, "gcs"), cluster.token) as s:
        reply = support.request(s, {"op": "register_node", "node_id": node_id, "resources": {"CPU": 1.0},
                                    "address": "tcp:127.0.0.1:1", "unix_address": "", "shm_dir": "", "pid": 0,
                                    "hostname": "fuzz", "node_ip": "127.0.0.1", "session_dir": "",
                                    "transfer_address": "tcp:127.0.0.1:1"})
        assert reply is not None and reply["ok"], reply
    def dead() -> bool:
        return not next(n for n in cluster.gcs({"op": "list_nodes"})["nodes"] if n["node_id"] == node_id)["alive"]
    wait_for(dead, timeout=10, what="the node registered by a closed connection to be dead")


def test_a_node_picked_for_a_spillback_that_never_comes_is_free_again(driver, tmp_path):
    """pick_node debits the control store's view of the node it picks; that node reported again
    only when its own use changed, so an idle node looked full for good and work waited
    behind a busy one instead of spilling to it."""
    import runtime
    from runtime._testing.sync import wait_for_path
    from runtime.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    head, joined = driver.procs.nodes[0]["node_id"], driver.joined["node_id"]
    go = str(tmp_path / "go")
    hold = runtime.remote(num_cpus=1)(wait_for_path).options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(head, soft=False)).remote(go, 60)

    @runtime.remote(num_cpus=1)
    def where() -> str:
        return runtime.get_runtime_context().get_node_id()

    try:
        wait_for(lambda: driver.gcs({"op": "cluster_resources"})["nodes"][head]["available"]["CPU"] == 0,
                 timeout=30, what="the head's CPU to be taken")
        # The last of these picks debits the joined node's view by the CPU it has.
        wait_for(lambda: driver.gcs({"op": "pick_node", "demand": {"CPU": 1.0}}).get("node_id") == joined,
                 timeout=10, what="the control store to see the joined node's CPU free")
        assert runtime.get(where.remote(), timeout=20) == joined
    finally:
        open(go, "w").close()
    assert runtime.get(hold, timeout=30)


def test_resource_amounts_that_cannot_be_compared_are_refused(cluster):
    with _session(_listener(cluster, "gcs"), cluster.token) as s:
        for msg in ({"op": "pick_node", "demand": {"CPU": math.nan}},
                    {"op": "create_pg", "pg_id": secrets.token_hex(16), "bundles": [{"CPU": "one"}],
                     "strategy": "PACK"},
                    {"op": "create_actor", "actor_id": secrets.token_hex(16), "namespace": "", "class_name": "A",
                     "meta": {}, "spec": {}, "demand": {"CPU": -1}, "max_restarts": 0, "detached": False},
                    {"op": "create_actor", "actor_id": secrets.token_hex(16), "namespace": "", "class_name": "A",
                     "meta": {}, "spec": {}, "demand": {}, "max_restarts": "many", "detached": False}):
            reply = support.request(s, msg)
            assert reply is not None and reply["ok"] is False, (msg, reply)
        # A report for a node other than the connection's own is ignored (it replaced that node's view).
        support.request(s, {"op": "resource_report", "node_id": cluster.joined["node_id"], "total": {"CPU": "x"},
                            "available": {}, "pending": 0})
    assert cluster.gcs({"op": "list_pgs"})["placement_groups"] == []
    cluster.run_tasks()


def test_a_malformed_metrics_report_does_not_break_the_nodes_metrics(cluster):
    """It was kept and broke every scrape of the node (500) for five minutes."""
    lst = _listener(cluster, "node", "joined", unix=True)
    with _session(lst, cluster.token, {"kind": "driver", "worker_id": secrets.token_hex(16)}) as s:
        assert support.request(s, {"op": "metrics_report", "families": [{"name": "x", "samples": [[1, 2]]}]})
    assert support.http_alive(_listener(cluster, "metrics", "joined"), "/metrics") == 200


def test_the_worker_of_a_lease_whose_owner_left_is_stopped(cluster):
    """It was left 'released': never used again, never stopped (a process per lease)."""
    lst = _listener(cluster, "node", "joined", unix=True)
    with _session(lst, cluster.token, {"kind": "driver", "worker_id": secrets.token_hex(16)}) as s:
        lease = support.request(s, {"op": "lease", "demand": {"CPU": 0.5, JOINED: 0.5}, "job": "fuzz"}, timeout=30)
        assert lease is not None and lease["ok"] and lease["pid"], lease

    def gone() -> bool:
        try:
            return psutil.Process(lease["pid"]).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True
    wait_for(gone, timeout=10, what="the leased worker to be stopped")
    cluster.run_tasks()


def test_hellos_with_ids_that_are_not_strings_are_refused(cluster):
    """A list as worker_id was kept; the node manager's close handler then failed on it before
    giving the connection's leases back."""
    for server, node in (("node", "head"), ("gcs", "head")):
        with _session(_listener(cluster, server, node), cluster.token, {"kind": "driver", "worker_id": [1]}) as s:
            assert support.request(s, {"op": "__fuzz_probe__"}) is None, server
        assert support.rpc_alive(_listener(cluster, server, node), cluster.token)


def test_a_reply_with_an_id_that_cannot_be_a_key_is_ignored(cluster):
    """With a request of the server's own waiting on the connection, it raised in the
    protocol's data_received (asyncio's 'Fatal error' path closed the connection)."""
    with _session(_listener(cluster, "node", unix=True), cluster.token,
                  {"kind": "driver", "worker_id": secrets.token_hex(16)}) as s:
        s.sendall(support.frame({"op": "list_objects", "id": 5}))  # the node asks us (list_refs) in turn
        asked = support.read_until(s, lambda m: m.get("op") == "list_refs")
        assert support.exchange(s, support.frame({"op": "_r", "id": [1], "ok": True}), 9, 10) == "answered"
        s.sendall(support.frame({"op": "_r", "id": asked["id"], "ok": True, "objects": []}))
        assert support.read_until(s, lambda m: m.get("op") == "_r" and m.get("id") == 5)["ok"]


def test_a_worker_survives_a_malformed_task(driver):
    """The worker's main loop raised on a task without its fields, and the worker exited."""
    workers = [lst for lst in driver.listeners() if lst.server == "worker"]
    assert workers
    for lst in workers:
        with _session(lst, driver.token) as s:
            reply = support.request(s, {"op": "push"})
            assert reply is not None and reply["ok"] is False and "malformed" in reply["err"], reply
        assert support.rpc_alive(lst, driver.token), lst
    driver.check_tasks()


def test_a_submission_id_is_a_plain_name(cluster):
    """Over RPC it was joined to the jobs directory as given: '/elsewhere' made a directory
    there (the control store runs as its user; as root, anywhere)."""
    with _session(_listener(cluster, "gcs"), cluster.token) as s:
        for sid in (strategies.ESCAPE_DIR, "../../orr-fuzz-escape", ".."):
            reply = support.request(s, {"op": "submit_job", "entrypoint": "true", "submission_id": sid})
            assert reply is not None and reply["ok"] is False and "plain name" in reply["err"], (sid, reply)
    assert not os.path.exists(strategies.ESCAPE_DIR)


def test_every_rpc_server_answers_after_these(cluster):
    for lst in cluster.listeners():
        if lst.role == RPC:
            assert support.rpc_alive(lst, cluster.token), lst


def test_task_events_with_fields_of_the_wrong_type_do_not_break_the_tables(cluster):
    """A running task whose name was a list was kept; the control store's metrics (the head's
    /metrics) and the state API then failed on it until the task table was trimmed."""
    with _session(_listener(cluster, "gcs"), cluster.token) as s:
        rows = [{"task_id": secrets.token_hex(8), "state": "RUNNING", "name": [1]},
                {"task_id": [2], "state": "FINISHED"}, {"task_id": secrets.token_hex(8), "state": {}}, 5]
        support.request(s, {"op": "task_events", "tasks": rows})
    assert support.http_alive(_listener(cluster, "metrics", "head"), "/metrics") == 200
    dashboard = _listener(cluster, "dashboard")
    for path in ("/api/v0/tasks", "/api/v0/tasks/summarize", "/api/v0/tasks/timeline", "/api/orrery/overview"):
        assert support.http_alive(dashboard, path) == 200, path
