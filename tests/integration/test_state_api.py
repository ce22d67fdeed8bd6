"""The state API over the dashboard's HTTP (Ray's /api/v0 paths and envelope; `make compat-ray`
runs Ray's own client against it) and the state CLI (`runtime list/get/summary/logs/memory/
timeline`), on real clusters. Bad input is a 4xx with a message and the server lives on."""

from __future__ import annotations

import json
import os
import socket
import urllib.error
import urllib.request

import pytest

import runtime
from runtime._core import ray_state
from runtime._testing.sync import wait_for

pytestmark = pytest.mark.timeout(180)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> tuple[int, object]:
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:
            body = resp.read()
            status = resp.status
    except urllib.error.HTTPError as e:
        body, status = e.read(), e.code
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body.decode()


@runtime.remote
def shout(x):
    print(f"shout {x}")
    if x == 2:
        raise ValueError("two is not allowed")
    return x


@runtime.remote
class Greeter:
    def greet(self):
        print("greetings from the actor")
        return "hi"


def test_http_state_api_as_rays(own_cluster):
    port = _free_port()
    ctx = runtime.init(num_cpus=2, dashboard_port=port)
    base = f"http://127.0.0.1:{port}/api/v0"
    greeter = Greeter.options(name="greeter").remote()
    assert runtime.get(greeter.greet.remote()) == "hi"
    refs = [shout.remote(i) for i in range(4)]
    runtime.wait(refs, num_returns=4)
    pg = runtime.util.placement_group([{"CPU": 0.5}], name="pg1")
    runtime.get(pg.ready())
    kept = runtime.put(b"x" * 300_000)

    def tasks_done():
        status, body = _get(f"{base}/tasks?limit=100")
        return body if status == 200 and body["data"]["result"]["total"] == 5 else None

    body = wait_for(tasks_done, timeout=30, what="the 5 tasks in the state API")
    assert body["result"] is True and body["msg"] == ""
    listing = body["data"]["result"]
    assert set(listing["result"][0]) == set(ray_state.SCHEMAS["tasks"]["columns"])  # no detail columns

    status, body = _get(f"{base}/tasks?filter_keys=state&filter_predicates=%3D&filter_values=failed&detail=true")
    [failed] = body["data"]["result"]["result"]
    assert status == 200 and failed["name"] == "shout" and failed["error_type"] == "TASK_EXECUTION_EXCEPTION"
    assert failed["error_message"] == "ValueError: two is not allowed" and "events" in failed

    status, body = _get(f"{base}/tasks?filter_keys=name&filter_predicates=%3D&filter_values=shout&limit=1")
    page = body["data"]["result"]
    assert (page["total"], page["num_filtered"], len(page["result"])) == (5, 4, 1)

    _, body = _get(f"{base}/actors?detail=true")
    [actor] = body["data"]["result"]["result"]
    assert (actor["name"], actor["state"], actor["class_name"]) == ("greeter", "ALIVE", "Greeter")
    _, body = _get(f"{base}/placement_groups?detail=true")
    assert body["data"]["result"]["result"][0]["bundles"][0]["unit_resources"] == {"CPU": 0.5}
    _, body = _get(f"{base}/objects")
    assert kept.hex() in [o["object_id"] for o in body["data"]["result"]["result"]]
    _, body = _get(f"{base}/workers")
    assert {"WORKER", "DRIVER"} <= {w["worker_type"] for w in body["data"]["result"]["result"]}
    _, body = _get(f"{base}/nodes")
    [node] = body["data"]["result"]["result"]
    assert node["node_id"] == ctx.address_info["node_id"] and node["is_head_node"] is True

    _, body = _get(f"{base}/tasks/summarize")
    summary = body["data"]["result"]["result"]["node_id_to_summary"]["cluster"]["summary"]
    assert summary["shout"]["state_counts"] == {"FINISHED": 3, "FAILED": 1}
    status, events = _get(f"{base}/tasks/timeline")
    assert status == 200 and sum(1 for e in events if e["ph"] == "X" and e["name"] == "shout") == 4

    # Logs: by actor, by task (only that task's lines), by file; and what is refused.
    node_id = node["node_id"]
    _, body = _get(f"{base}/logs?node_id={node_id}")
    assert "worker_out" in body["data"]["result"] and body["data"]["result"]["gcs_server"] == ["gcs.log"]
    _, text = _get(f"{base}/logs/file?actor_id={actor['actor_id']}")
    assert "greetings from the actor" in text
    shout1 = next(t for t in listing["result"] if t["name"] == "shout" and t["state"] == "FINISHED")
    _, text = _get(f"{base}/logs/file?task_id={shout1['task_id']}")
    assert text.count("shout ") == 1
    _, text = _get(f"{base}/logs/file?node_ip=127.0.0.1&filename=gcs.log&lines=5")
    assert 0 < len(text.splitlines()) <= 5

    for path, code, words in (
            ("/bogus", 404, "No state resource 'bogus'"),
            ("/tasks?filter_keys=bogus&filter_predicates=%3D&filter_values=1", 400, "filter column bogus"),
            ("/tasks?limit=0", 400, "limit"), ("/tasks?limit=many", 400, "whole number"),
            ("/tasks?filter_keys=state&filter_values=x", 400, "in threes"),
            ("/logs", 400, "node id and node ip"),
            (f"/logs/file?node_id={node_id}&filename=../token", 400, "not a log file name"),
            (f"/logs/file?node_id={node_id}&filename=nope.log", 404, "No log file"),
            ("/logs/file?task_id=ffff", 400, "No task 'ffff'")):
        status, body = _get(base + path)
        message = body["msg"] if isinstance(body, dict) else body
        assert status == code and words in message, (path, status, body)
    assert _get(f"{base}/nodes")[0] == 200  # still serving
    del kept


def test_state_cli_lists_gets_summarises_logs_memory_timeline(tmp_path, cli):
    port = _free_port()
    cli.run("start", "--head", "--port", "0", "--num-cpus", "2", "--client-server-port", "0",
            "--dashboard-port", str(port))
    driver = cli.start_driver("""
        import os, sys
        os.environ["RAY_record_ref_creation_sites"] = "1"
        import runtime
        runtime.init(address="auto")

        @runtime.remote
        def work(x):
            print("working on", x)
            if x == 1:
                raise KeyError("one")
            return x

        @runtime.remote
        class Keeper:
            def hold(self):
                print("keeper holds")
                return 1

        keeper = Keeper.options(name="keeper").remote()
        runtime.get(keeper.hold.remote())
        runtime.wait([work.remote(i) for i in range(3)], num_returns=3)
        big = [runtime.put(b"y" * 150_000) for _ in range(3)]   # PUT SITE
        print("ready", flush=True)
        sys.stdin.readline()
    """)
    try:
        # Its tasks' output comes first: read up to its "ready" (or its exit).
        seen = []
        for line in driver.stdout:
            seen.append(line)
            if line.strip() == "ready":
                break
        assert seen and seen[-1].strip() == "ready", "".join(seen)

        def json_out(*args):
            return json.loads(cli.run(*args, "--format", "json").stdout)

        [actor] = json_out("list", "actors")
        assert actor["name"] == "keeper" and actor["state"] == "ALIVE"
        failed = wait_for(lambda: json_out("list", "tasks", "--filter", "state=FAILED"), timeout=30,
                          what="the failed task listed")
        assert [t["name"] for t in failed] == ["work"] and failed[0]["error_type"] == "TASK_EXECUTION_EXCEPTION"
        assert len(json_out("list", "tasks", "--limit", "1")) == 1
        detail = json_out("list", "tasks", "--filter", "name=work", "--detail")
        assert len(detail) == 3 and "error_message" in detail[0]
        [got] = json_out("get", "tasks", failed[0]["task_id"])
        assert got["error_message"] == "KeyError: 'one'"
        missing = cli.run("get", "actors", "0" * 32, check=False)
        assert missing.returncode == 1 and "not found" in missing.stderr
        summary = json_out("summary", "tasks")[0]
        assert summary["summary"]["work"]["state_counts"] == {"FINISHED": 2, "FAILED": 1}
        table = cli.run("list", "workers", "--format", "table").stdout
        assert "WORKER_ID" in table and "DRIVER" in table
        default = cli.run("list", "nodes").stdout
        assert "======== List:" in default and "Total: 1" in default
        yaml_out = cli.run("list", "actors", "--format", "yaml").stdout
        assert "name: keeper" in yaml_out

        assert "keeper holds" in cli.run("logs", "actor", "--id", actor["actor_id"]).stdout
        task_log = cli.run("logs", "task", "--id", failed[0]["task_id"]).stdout
        assert "working on 1" in task_log and "working on 0" not in task_log
        files = cli.run("logs").stdout
        assert "gcs.log" in files and "worker_out" in files
        assert cli.run("logs", "gcs.log", "--tail", "3").stdout.count("\n") <= 3
        bad_log = cli.run("logs", "../token", check=False)
        assert bad_log.returncode == 2 and "not a log file name" in bad_log.stderr
        no_log = cli.run("logs", "nope.log", check=False)
        assert no_log.returncode == 1 and "No log file 'nope.log'" in no_log.stderr

        memory = cli.run("memory", "--group-by", "STACK_TRACE", "--units", "KB").stdout
        site_line = next(line for line in memory.splitlines() if "Summary for call site" in line)
        # The driver's line that made them (`python -c`, so "<string>", in its list comprehension).
        put_line = next(i for i, text in enumerate(driver.args[-1].splitlines(), 1) if "PUT SITE" in text)
        assert f"<string>:{put_line} in " in site_line, memory
        assert "Objects: 3" in memory.split(site_line, 1)[1].splitlines()[1]
        by_node = cli.run("memory", "--stats-only").stdout
        assert "Summary for node address: 127.0.0.1" in by_node

        out = tmp_path / "trace.json"
        cli.run("timeline", "--output", str(out))
        events = json.loads(out.read_text())
        assert sum(1 for e in events if e["ph"] == "X" and e["name"] == "work") == 3

        over_http = json.loads(cli.run("list", "actors", "--address", f"http://127.0.0.1:{port}",
                                       "--format", "json").stdout)
        assert over_http == [actor]
        bad = cli.run("list", "tasks", "--filter", "nonsense=1", check=False)
        assert bad.returncode == 2 and "filter column nonsense is not supported" in bad.stderr
        assert not any(j["type"] == "DRIVER" and "list" in (j["entrypoint"] or "") for j in json_out("list", "jobs"))
    finally:
        driver.stdin.close()
        driver.wait(60)
        driver.stdout.close()
        driver.stderr.close()
    assert os.path.exists(cli.tmpdir)
