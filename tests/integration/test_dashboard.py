"""The head's dashboard: Ray's job REST API over real HTTP (`make compat-ray` runs Ray's own
clients against it), started on first use, and bad input answered with 4xx and a message
while the server lives on."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import urllib.error
import urllib.request

import psutil
import pytest

import runtime
from runtime._testing.sync import wait_for

pytestmark = pytest.mark.timeout(120)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _http(url: str, method: str = "GET", body: bytes | None = None) -> tuple[int, object]:
    req = urllib.request.Request(url, data=body, method=method)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            raw = resp.read()
            return resp.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            return e.code, json.loads(raw or b"null")
        except ValueError:
            return e.code, raw.decode(errors="replace")  # aiohttp's own 413 is text


def _dashboard_procs() -> list[psutil.Process]:
    return [p for p in psutil.process_iter(["cmdline"]) if "runtime.dashboard" in " ".join(p.info["cmdline"] or [])]


def test_job_api_as_rays_started_on_first_use(cli):
    port = _free_port()
    cli.run("start", "--head", "--port", "0", "--num-cpus", "1", "--client-server-port", "0",
            "--dashboard-port", str(port))
    base = f"http://127.0.0.1:{port}"
    assert _dashboard_procs() == []  # nothing opened it yet: no process
    status, version = _http(f"{base}/api/version")
    assert status == 200 and version["version"] == "4" and version["ray_version"] == "2.60.0"
    assert len(_dashboard_procs()) == 1

    status, sub = _http(f"{base}/api/jobs/", "POST", json.dumps(
        {"entrypoint": "echo $GREETING from a job", "runtime_env": {"env_vars": {"GREETING": "hello"}},
         "metadata": {"who": "test"}}).encode())
    assert status == 200 and sub["submission_id"] == sub["job_id"]
    job = sub["submission_id"]
    wait_for(lambda: _http(f"{base}/api/jobs/{job}")[1]["status"] == "SUCCEEDED", timeout=30, what="the job done")
    info = _http(f"{base}/api/jobs/{job}")[1]
    assert info["type"] == "SUBMISSION" and info["metadata"] == {"who": "test"} and info["driver_exit_code"] == 0
    assert isinstance(info["start_time"], int) and info["end_time"] >= info["start_time"]  # ms, as Ray
    assert _http(f"{base}/api/jobs/{job}/logs")[1] == {"logs": "hello from a job\n"}
    assert job in [j["submission_id"] for j in _http(f"{base}/api/jobs/")[1]]

    async def tail(job_id: str) -> str:
        import aiohttp
        async with aiohttp.ClientSession() as s, s.ws_connect(f"{base}/api/jobs/{job_id}/logs/tail") as ws:
            return "".join([m.data async for m in ws])
    assert asyncio.run(tail(job)) == "hello from a job\n"  # closed once the job has ended

    status, sleeper = _http(f"{base}/api/jobs/", "POST", json.dumps({"entrypoint": "sleep 60"}).encode())
    running = sleeper["submission_id"]
    wait_for(lambda: _http(f"{base}/api/jobs/{running}")[1]["status"] == "RUNNING", timeout=30, what="running")
    status, body = _http(f"{base}/api/jobs/{running}", "DELETE")
    assert status == 400 and "only a finished job can be deleted" in body["message"]
    assert _http(f"{base}/api/jobs/{running}/stop", "POST") == (200, {"stopped": True})
    wait_for(lambda: _http(f"{base}/api/jobs/{running}")[1]["status"] == "STOPPED", timeout=30, what="stopped")
    assert _http(f"{base}/api/jobs/{running}", "DELETE") == (200, {"deleted": True})
    assert _http(f"{base}/api/jobs/{running}")[0] == 404
    cli.run("stop")
    wait_for(lambda: _dashboard_procs() == [], timeout=15, what="the dashboard gone with the cluster")


def test_bad_requests_get_4xx_with_a_message_and_the_server_lives_on(cli):
    port = _free_port()
    cli.run("start", "--head", "--port", "0", "--num-cpus", "1", "--client-server-port", "0",
            "--dashboard-port", str(port))
    base = f"http://127.0.0.1:{port}"
    cases = [
        ("GET", "/api/jobs/job_nope", None, 404, "does not exist"),
        ("POST", "/api/jobs/", b"{not json", 400, "not JSON"),
        ("POST", "/api/jobs/", b"[1, 2]", 400, "JSON object"),
        ("POST", "/api/jobs/", json.dumps({"entrypoint": 7}).encode(), 400, "wrong type"),
        ("POST", "/api/jobs/", json.dumps({"entrypoint": "x", "bogus": 1}).encode(), 400, "Unknown field"),
        ("POST", "/api/jobs/", json.dumps({"entrypoint": "x", "runtime_env": {"conda": "env"}}).encode(), 400,
         "not supported"),
        ("POST", "/api/jobs/", json.dumps({"entrypoint": "x", "runtime_env": {"working_dir": "gcs://_ray_pkg_x.zip"}})
         .encode(), 400, "not an uploaded package"),
        ("GET", "/api/jobs/..%2F..%2Fetc/logs", None, 400, "not a job id"),
        ("PUT", "/api/packages/gcs/..%2Fescape.zip", b"x", 400, "package name"),
        ("GET", "/api/packages/gcs/_ray_pkg_missing.zip", None, 404, "does not exist"),
    ]
    for method, path, body, code, text in cases:
        status, answer = _http(base + path, method, body)
        assert status == code and text in json.dumps(answer), (method, path, status, answer)
    status, _ = _http(f"{base}/api/jobs/", "POST", b"x" * (513 * 2**20))
    assert status == 413
    assert _http(f"{base}/api/version")[0] == 200  # still alive
    cli.run("stop")


def test_embedded_init_gives_the_dashboard_url_and_a_taken_port_is_said(own_cluster):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        with pytest.raises(OSError, match=f"dashboard port 127.0.0.1:{port} is taken"):
            runtime.init(num_cpus=1, dashboard_port=port)
        assert not runtime.is_initialized()
        ctx = runtime.init(num_cpus=1)
        assert ctx.dashboard_url and ctx.address_info["webui_url"] == ctx.dashboard_url
        assert _http(f"http://{ctx.dashboard_url}/api/version")[0] == 200
        runtime.shutdown()
        assert runtime.init(num_cpus=1, include_dashboard=False).dashboard_url is None
    finally:
        taken.close()
        runtime.shutdown()


def test_our_client_and_cli_speak_the_http_job_api(cli):
    """`runtime.job_submission.JobSubmissionClient("http://...")` and `runtime job ... --address
    http://...`: Ray's API, with a working_dir uploaded as Ray's client does."""
    from runtime.job_submission import JobSubmissionClient
    port = _free_port()
    cli.run("start", "--head", "--port", "0", "--num-cpus", "1", "--client-server-port", "0",
            "--dashboard-port", str(port))
    address = f"http://127.0.0.1:{port}"
    import pathlib
    wd = pathlib.Path(cli.tmpdir) / "wd"  # not tmp_path: pytest would root it in this test's TMPDIR
    wd.mkdir()
    (wd / "only_here.py").write_text("import os\nprint('ran', os.environ['X'], 'in the working_dir')\n")
    client = JobSubmissionClient(address, metadata={"team": "a"})
    job = client.submit_job(entrypoint="python only_here.py", runtime_env={"working_dir": str(wd),
                                                                            "env_vars": {"X": "42"}})

    async def tail() -> str:
        return "".join([t async for t in client.tail_job_logs(job)])
    assert asyncio.run(tail()) == "ran 42 in the working_dir\n"
    info = client.get_job_info(job)
    assert info.status == "SUCCEEDED" and info["metadata"] == {"team": "a"}
    assert client.delete_job(job) and all(j.submission_id != job for j in client.list_jobs()
                                          if j.type == "SUBMISSION")
    out = cli.run("job", "submit", "--address", address, "--working-dir", str(wd), "--runtime-env-json",
                  '{"env_vars": {"X": "7"}}', "--", "python", "only_here.py").stdout
    assert "ran 7 in the working_dir" in out and "SUCCEEDED" in out
    bad = cli.run("job", "status", "--address", address, "job_nope", check=False)
    assert bad.returncode == 1 and "does not exist" in bad.stderr and "Traceback" not in bad.stderr
    assert "SUBMISSION" in cli.run("job", "list", "--address", address).stdout
    cli.run("stop")


def test_a_dashboard_beyond_loopback_needs_the_cluster_token(cli):
    port = _free_port()
    cli.run("start", "--head", "--port", "0", "--num-cpus", "1", "--client-server-port", "0",
            "--dashboard-host", "0.0.0.0", "--dashboard-port", str(port))
    base = f"http://127.0.0.1:{port}"
    status, body = _http(f"{base}/api/version")
    assert status == 401 and "needs the cluster's token" in body["message"] and "Authorization: Bearer" in body["message"]
    with open(os.path.join(cli.tmpdir, "orrery", "current_cluster.json")) as f:
        token = json.load(f)["token"]
    wrong = urllib.request.Request(f"{base}/api/version", headers={"Authorization": "Bearer nope"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(wrong, timeout=30)
    assert e.value.code == 401 and b"a wrong token" in e.value.read()
    right = urllib.request.Request(f"{base}/api/v0/nodes", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(right, timeout=30) as resp:
        assert json.loads(resp.read())["data"]["result"]["total"] == 1
    # Our client and CLI take it from RUNTIME_CLUSTER_TOKEN; Ray's client from headers=.
    from runtime.job_submission import JobSubmissionClient
    jobs = JobSubmissionClient(base, headers={"Authorization": f"Bearer {token}"}).list_jobs()
    assert all(j.type == "DRIVER" for j in jobs)
    refused = cli.run("list", "nodes", "--address", base, check=False)
    assert refused.returncode == 1 and "401" in refused.stderr
    cli.env["RUNTIME_CLUSTER_TOKEN"] = token
    assert "ALIVE" in cli.run("list", "nodes", "--address", base).stdout
    assert "SUBMISSION" not in cli.run("job", "list", "--address", base).stdout


def test_entrypoint_resources_are_held_while_the_job_runs(cli, tmp_path):
    port = _free_port()
    cli.run("start", "--head", "--port", "0", "--num-cpus", "2", "--client-server-port", "0",
            "--dashboard-port", str(port))
    from runtime.job_submission import JobSubmissionClient
    client = JobSubmissionClient(f"http://127.0.0.1:{port}")
    release = tmp_path / "release"
    waits = f"python -c \"import os, time\nwhile not os.path.exists('{release}'): time.sleep(0.05)\""
    first = client.submit_job(entrypoint=waits, entrypoint_num_cpus=2)
    wait_for(lambda: str(client.get_job_status(first)).endswith("RUNNING"), timeout=60, what="the first job runs")

    def free_cpus():
        return json.loads(cli.driver("""
            import json, runtime
            runtime.init(address="auto")
            print(json.dumps(runtime.available_resources().get("CPU", 0.0)))
        """).strip().splitlines()[-1])

    assert free_cpus() == 0.0  # both held for the first job's driver
    second = client.submit_job(entrypoint="echo second ran", entrypoint_num_cpus=1)
    info = client.get_job_info(second)
    assert str(info.status).endswith("PENDING") and "waiting for the entrypoint resources" in info.message
    release.touch()
    wait_for(lambda: str(client.get_job_status(second)).endswith("SUCCEEDED"), timeout=60,
             what="the second job runs once the first has released its CPUs")
    assert "second ran" in client.get_job_logs(second)
    wait_for(lambda: free_cpus() == 2.0, timeout=30, what="the CPUs back after both jobs")

    # A job stopped while it waits never starts; a negative amount is refused.
    third = client.submit_job(entrypoint="echo never", entrypoint_resources={"nonexistent": 1})
    assert str(client.get_job_status(third)).endswith("PENDING")
    assert client.stop_job(third) is True
    assert str(client.get_job_status(third)).endswith("STOPPED") and "never" not in client.get_job_logs(third)
    status, body = _http(f"http://127.0.0.1:{port}/api/jobs/", "POST",
                         json.dumps({"entrypoint": "true", "entrypoint_num_cpus": -1}).encode())
    assert status == 400 and "must be a non-negative number" in body["message"]
