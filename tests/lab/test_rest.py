"""The /orrery/api endpoints of a real Jupyter server against a real cluster.

The test process joins the cluster started by `runtime start --head` and submits work;
the server (another process, a driver of its own) must see it through the state API.
"""

from __future__ import annotations

import json
import sys
import time

import cloudpickle
import pytest

import runtime
from runtime._testing.sync import SignalActor, wait_for
from runtime.exceptions import TaskCancelledError

from . import jupyter_proc
from .jupyter_proc import hold_cpu_until, start_jupyter

cloudpickle.register_pickle_by_value(sys.modules[__name__])
cloudpickle.register_pickle_by_value(jupyter_proc)  # workers cannot import the tests' modules

pytestmark = pytest.mark.timeout(180)

API = "/orrery/api"


lab_blocked_task = runtime.remote(hold_cpu_until)


def _task_rows(server, name: str, query: str = "") -> list[dict]:
    body = server.get(f"{API}/tasks{query}")
    assert body["connected"], body
    return [t for t in body["tasks"] if t["name"].endswith(name)]


def _running(server, name: str) -> dict | None:
    rows = [t for t in _task_rows(server, name) if t["state"] == "RUNNING"]
    return rows[0] if rows else None


def test_endpoints_show_cluster_state_and_cancel_a_running_task(lab_server, lab_tmp):
    server = lab_server
    signal = runtime.remote(SignalActor).options(num_cpus=0).remote()
    assert runtime.get(signal.is_set.remote(), timeout=60) is False  # the actor is up
    started, release = lab_tmp / "started", lab_tmp / "release"
    blocked = lab_blocked_task.remote(str(started), str(release))
    kept = runtime.put(b"x" * (1024 * 1024))
    wait_for(started.exists, timeout=60, what="the blocked task running")

    clusters = server.get(f"{API}/clusters")
    assert clusters["connected"] is True, clusters
    assert clusters["nodes"] == 1 and clusters["alive_nodes"] == 1
    assert clusters["resources_total"]["CPU"] == 2

    nodes = server.get(f"{API}/nodes")["nodes"]
    assert len(nodes) == 1
    assert nodes[0]["state"] == "ALIVE" and nodes[0]["is_head_node"] is True
    assert nodes[0]["resources_total"]["CPU"] == 2

    metrics = server.get(f"{API}/metrics")
    assert metrics["cpu"] == {"used": 1.0, "total": 2.0}, metrics  # the blocked task holds one CPU
    assert metrics["object_store"]["capacity_bytes"] == 64 * 1024 * 1024
    assert metrics["object_store"]["used_bytes"] >= 1024 * 1024, metrics

    actors = server.get(f"{API}/actors")["actors"]
    assert [a["state"] for a in actors if a["class_name"] == "SignalActor"] == ["ALIVE"], actors

    objects = server.get(f"{API}/objects")["objects"]
    assert kept.hex() in {o["object_id"] for o in objects}, objects

    assert server.get(f"{API}/placement_groups")["placement_groups"] == []

    row = wait_for(lambda: _running(server, "hold_cpu_until"), timeout=30,
                   what="the blocked task listed as RUNNING by /orrery/api/tasks")
    assert row["cell_id"] is None and row["cell"] is None  # submitted outside a notebook
    # The cell filter is applied by the server: no task of ours belongs to this cell.
    assert _task_rows(server, "hold_cpu_until", "?cell=no-such-cell") == []

    status, body = server.request(f"{API}/tasks/{row['task_id']}/cancel", method="POST",
                                  body=json.dumps({"force": False}).encode())
    assert status == 200, (status, body)
    assert body["cancelled"] is True
    with pytest.raises(TaskCancelledError):
        runtime.get(blocked, timeout=30)
    wait_for(lambda: [t["state"] for t in _task_rows(server, "hold_cpu_until")] == ["CANCELLED"],
             timeout=30, what="the task listed as CANCELLED")

    # Cancelling it again is a conflict, not a success.
    status, body = server.request(f"{API}/tasks/{row['task_id']}/cancel", method="POST", body=b"{}")
    assert status == 409 and "no longer running" in body["message"], (status, body)
    del kept


def test_cell_filter_selects_the_tasks_of_one_cell(lab_server):
    server = lab_server
    from runtime._core import api_state, worker_state

    @runtime.remote
    def lab_tagged_task():
        return 1

    # What kernel_ext's cell tagger does before each cell runs (kernel_ext/cell_tags.py).
    cell = {"notebook": "demo.ipynb", "cell_id": "cell-abc", "execution_count": 7}
    api_state.current_cell = worker_state.current().current_cell = cell
    try:
        tagged = lab_tagged_task.remote()
    finally:
        api_state.current_cell = worker_state.current().current_cell = None
    untagged = lab_tagged_task.remote()
    assert runtime.get([tagged, untagged], timeout=30) == [1, 1]

    rows = wait_for(lambda: _task_rows(server, "lab_tagged_task", "?cell=cell-abc"), timeout=30,
                    what="the tagged task listed under ?cell=cell-abc")
    assert len(rows) == 1 and rows[0]["cell"] == cell, rows
    assert len(_task_rows(server, "lab_tagged_task")) == 2


def test_bad_input_answers_4xx_with_a_message(lab_server):
    server = lab_server
    status, body = server.request(f"{API}/tasks/{'ab' * 12}/cancel", method="POST", body=b"")
    assert status == 404 and "No task with id" in body["message"], (status, body)
    status, body = server.request(f"{API}/tasks/not-hex/cancel", method="POST", body=b"")
    assert status == 400 and "not a hex task id" in body["message"], (status, body)
    status, body = server.request(f"{API}/tasks/{'ab' * 12}/cancel", method="POST", body=b"{force")
    assert status == 400 and "not JSON" in body["message"], (status, body)
    status, body = server.request(f"{API}/tasks/{'ab' * 12}/cancel", method="POST", body=b'{"force": "yes"}')
    assert status == 400 and '"force" must be true or false' in body["message"], (status, body)
    status, body = server.request(f"{API}/tasks?limit=zero")
    assert status == 400 and "limit must be a positive integer" in body["message"], (status, body)


def test_endpoints_need_the_token(lab_server):
    for path in ("clusters", "nodes", "tasks", "actors", "placement_groups", "objects", "metrics"):
        status, _ = lab_server.request(f"{API}/{path}", token="")
        assert status == 403, (path, status)
    status, _ = lab_server.request(f"{API}/tasks/{'ab' * 12}/cancel", method="POST", body=b"", token="wrong")
    assert status == 403


def test_no_cluster_answers_not_connected_quickly(lab_tmp, orrery_leak_check):
    # No cluster was started in this TMPDIR, so "auto" finds none.
    import os

    env = dict(os.environ)
    env.pop("RUNTIME_ADDRESS", None)
    env.pop("RAY_ADDRESS", None)
    server = start_jupyter(lab_tmp, env, app="server")
    try:
        for path in ("clusters", "nodes", "tasks", "metrics"):
            t0 = time.monotonic()
            body = server.get(f"{API}/{path}", timeout=15)
            assert time.monotonic() - t0 < 5, f"{path} took {time.monotonic() - t0:.1f} s"
            assert body["connected"] is False, body
            assert "'auto'" in body["reason"], body  # it says where it looked
    finally:
        server.stop()


def test_unreachable_address_answers_not_connected_quickly(lab_tmp, orrery_leak_check):
    import os

    from .jupyter_proc import free_port

    env = dict(os.environ, RUNTIME_ADDRESS=f"127.0.0.1:{free_port()}")
    server = start_jupyter(lab_tmp, env, app="server")
    try:
        t0 = time.monotonic()
        body = server.get(f"{API}/clusters", timeout=15)
        assert time.monotonic() - t0 < 5
        assert body["connected"] is False and env["RUNTIME_ADDRESS"] in body["reason"], body
    finally:
        server.stop()


def test_server_follows_clusters_never_starts_one_and_stops_quickly(cli, lab_tmp, orrery_leak_check):
    """Issue 16.1: with no cluster, then a head, then none, then another head, the server's
    answers follow; it never starts a cluster of its own; SIGTERM ends it within seconds."""
    import signal

    import psutil

    from .jupyter_proc import free_port

    env = dict(cli.env)
    env.pop("RUNTIME_ADDRESS", None)
    server = start_jupyter(lab_tmp, env, app="server")

    def runtime_children():
        return [p for p in psutil.Process(server.proc.pid).children(recursive=True)
                if "runtime." in " ".join(p.cmdline())]

    def connected_to(port):
        body = server.get(f"{API}/clusters", timeout=15)
        return body["connected"] and body["cluster_address"].endswith(f":{port}")

    try:
        assert server.get(f"{API}/clusters", timeout=15)["connected"] is False
        first = free_port()
        cli.run("start", "--head", "--port", str(first), "--num-cpus", "1")
        wait_for(lambda: connected_to(first), timeout=30, what="the server joined the first head")
        cli.run("stop")
        wait_for(lambda: server.get(f"{API}/clusters", timeout=15)["connected"] is False, timeout=30,
                 what="the server saw the first head go")
        for _ in range(5):  # requests while no cluster runs start nothing
            assert server.get(f"{API}/nodes", timeout=15)["connected"] is False
        assert runtime_children() == [], "the Jupyter server started runtime processes of its own"
        second = free_port()
        cli.run("start", "--head", "--port", str(second), "--num-cpus", "1")
        wait_for(lambda: connected_to(second), timeout=30, what="the server followed the second head")
        assert runtime_children() == []
        assert "init() was called twice" not in server.log()
        t0 = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        server.proc.wait(timeout=30)
        assert time.monotonic() - t0 < 10, f"the server took {time.monotonic() - t0:.1f} s to stop"
    finally:
        server.stop()
        cli.run("stop")


def _kernel_in(runtime_dir, env):
    """A real ipykernel whose connection file is in the server's runtime directory (as kernels the
    server starts have), so its announcement is where the server looks."""
    import uuid

    from jupyter_client.manager import KernelManager
    kernel_id = str(uuid.uuid4())
    km = KernelManager(kernel_name="python3", connection_file=str(runtime_dir / f"kernel-{kernel_id}.json"))
    km.start_kernel(env=env)
    kc = km.client()
    kc.start_channels()
    kc.wait_for_ready(timeout=60)
    return kernel_id, km, kc


def _run(kc, code):
    reply = kc.execute_interactive(code, timeout=90, output_hook=lambda msg: None)
    assert reply["content"]["status"] == "ok", reply["content"]


def test_answers_follow_the_cluster_of_the_kernel_asked_for(cli, lab_tmp, orrery_leak_check):
    """Issue 16.2: two notebooks' kernels, each with its own embedded cluster: `?kernel=ID` answers
    from that kernel's cluster; after a restart the kernel's new cluster is followed."""
    import os

    env = dict(cli.env)
    env.pop("RUNTIME_ADDRESS", None)
    server = start_jupyter(lab_tmp, env, app="server")
    runtime_dir = lab_tmp / "jruntime"
    kernels = []
    try:
        for cpus in (1, 2):
            kernel_id, km, kc = _kernel_in(runtime_dir, env)
            kernels.append((kernel_id, km, kc))
            _run(kc, f"%load_ext kernel_ext\n%cluster start --num-cpus {cpus}")
        (a, km_a, kc_a), (b, _, kc_b) = kernels

        def cpus_of(kernel_id):
            body = server.get(f"{API}/clusters?kernel={kernel_id}", timeout=15)
            return body["resources_total"].get("CPU") if body["connected"] and body["kernel"]["followed"] else None

        for kernel_id, cpus in ((a, 1.0), (b, 2.0), (a, 1.0)):  # focus moves A -> B -> A
            wait_for(lambda: cpus_of(kernel_id) == cpus, timeout=30, what=f"the cluster of kernel {kernel_id[:8]}")
        metrics = server.get(f"{API}/metrics?kernel={b}", timeout=15)
        assert metrics["cpu"]["total"] == 2.0

        _run(kc_b, "import runtime\n@runtime.remote\ndef held(p):\n    import os, time\n"
                   "    while not os.path.exists(p):\n        time.sleep(0.02)\n"
                   f"ref = held.remote({str(lab_tmp / 'go')!r})")
        count = kc_b.execute_interactive("get_ipython().execution_count", timeout=30, output_hook=lambda m: None)
        cell = f"In[{count['content']['execution_count'] - 1}]"
        wait_for(lambda: [t for t in server.get(f"{API}/tasks?kernel={b}&cell={cell}")["tasks"]
                          if t["name"].endswith("held")], timeout=30, what=f"the task found by the filter {cell}")
        (lab_tmp / "go").write_text("")

        km_a.restart_kernel(now=True)  # same id, new process: the old announcement is stale
        kc_a.wait_for_ready(timeout=60)
        body = server.get(f"{API}/clusters?kernel={a}", timeout=15)
        assert body["kernel"]["followed"] is False  # the server's default meanwhile, and it says so
        _run(kc_a, "%load_ext kernel_ext\n%cluster start --num-cpus 3")
        wait_for(lambda: cpus_of(a) == 3.0, timeout=30, what="the restarted kernel's new cluster")
        assert os.path.exists(runtime_dir / f"orrery-kernel-{a}.json")
    finally:
        for _, km, kc in kernels:
            kc.stop_channels()
            km.shutdown_kernel(now=False)
        server.stop()


def test_the_dashboard_through_the_jupyter_server(lab_server):
    """/orrery/dashboard/ is the cluster's web UI and its JSON, behind Jupyter's login."""
    import urllib.request
    page = urllib.request.Request(lab_server.url + "/orrery/dashboard/",
                                  headers={"Authorization": f"token {lab_server.token}"})
    with urllib.request.urlopen(page, timeout=30) as resp:
        assert "<title>Orrery dashboard</title>" in resp.read().decode()
    with urllib.request.urlopen(urllib.request.Request(lab_server.url + "/orrery/dashboard/static/app.js",
                                                       headers=page.headers), timeout=30) as resp:
        assert resp.headers["Content-Type"].startswith(("application/javascript", "text/javascript"))
    nodes = lab_server.get("/orrery/dashboard/api/v0/nodes?detail=true")
    assert nodes["data"]["result"]["total"] == 1 and nodes["data"]["result"]["result"][0]["state"] == "ALIVE"
    overview = lab_server.get("/orrery/dashboard/api/orrery/overview")
    assert overview["nodes"][0]["is_head"] is True
    status, body = lab_server.request("/orrery/dashboard/api/v0/bogus")
    assert status == 404 and "No state resource" in body["msg"]
    # Without Jupyter's token: its login page, as for any page of the server, never the cluster's data.
    import http.client
    import urllib.parse
    where = urllib.parse.urlsplit(lab_server.url)
    conn = http.client.HTTPConnection(where.hostname, where.port, timeout=30)
    conn.request("GET", "/orrery/dashboard/api/v0/nodes")
    answer = conn.getresponse()
    assert answer.status == 302 and "/login" in answer.getheader("Location", ""), answer.status
    conn.close()
