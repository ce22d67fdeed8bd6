"""Security of a cluster started with `runtime start` (docs/security.md): mutual TLS on every TCP
listener, the dashboard's token, and a token that never shows up where another user or a task
could read it."""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request

import psutil
import pytest

import runtime
from runtime._testing import tls as certs
from runtime._testing.sync import wait_for
from runtime.rpc.framing import encode

pytestmark = pytest.mark.slow

TLS_KEYS = ("RUNTIME_USE_TLS", "RUNTIME_TLS_SERVER_CERT", "RUNTIME_TLS_SERVER_KEY", "RUNTIME_TLS_CA_CERT")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cluster_processes(info: dict) -> list[psutil.Process]:
    """The head's processes, the nodes that joined it, and all their children."""
    from runtime._core import launcher
    nodes = launcher.gcs_request(info["gcs_address"], info["token"], {"op": "list_nodes"})["nodes"]
    pids = set(info["pids"].values()) | {n["pid"] for n in nodes if n["alive"]}
    procs = []
    for pid in pids:
        try:
            p = psutil.Process(pid)
            procs += [p, *p.children(recursive=True)]
        except psutil.NoSuchProcess:
            pass
    return procs


def _tcp_listeners(procs: list[psutil.Process]) -> set[tuple[str, int]]:
    found = set()
    for p in procs:
        try:
            found |= {tuple(c.laddr) for c in p.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN}
        except psutil.Error:
            pass
    return found


def _plain_hello_refused(addr: tuple[str, int], token: str) -> bool:
    """A plaintext hello with the right token gets no byte back: the connection is closed."""
    with socket.create_connection(addr, timeout=5) as s:
        try:
            s.sendall(b"".join(bytes(p) for p in encode({"op": "hello", "token": token, "info": {}})))
            s.sendall(b"GET / HTTP/1.0\r\n\r\n")
            return s.recv(1) == b""
        except (ConnectionResetError, BrokenPipeError):  # closed while we were still sending
            return True


def _tls_refused(addr: tuple[str, int], ctx: ssl.SSLContext) -> bool:
    try:
        with socket.create_connection(addr, timeout=5) as raw, ctx.wrap_socket(raw) as s:
            s.sendall(b"x")
            return s.recv(1) == b""  # TLS 1.3: a refused client certificate shows after the handshake
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
        return True


def _client_ctx(env: dict, with_cert: bool = True) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(env["RUNTIME_TLS_CA_CERT"])
    if with_cert:
        ctx.load_cert_chain(env["RUNTIME_TLS_SERVER_CERT"], env["RUNTIME_TLS_SERVER_KEY"])
    return ctx


def _without(env: dict, keys) -> dict:
    return {k: v for k, v in env.items() if k not in keys}


def test_tls_cluster_accepts_only_certificates_of_its_authority(cli, tmp_path, monkeypatch):
    env = certs.tls_env(str(tmp_path))
    rogue_dir = tmp_path / "rogue"
    rogue_dir.mkdir()
    rogue = certs.tls_env(str(rogue_dir))
    dash_port = _free_port()
    cli.run("start", "--head", "--port", "0", "--client-server-port", "0", "--num-cpus", "1",
            "--dashboard-port", str(dash_port), "--tls-cert", env["RUNTIME_TLS_SERVER_CERT"],
            "--tls-key", env["RUNTIME_TLS_SERVER_KEY"], "--tls-ca", env["RUNTIME_TLS_CA_CERT"])
    with open(os.path.join(cli.tmpdir, "orrery", "current_cluster.json")) as f:
        info = json.load(f)
    address = info["gcs_address"].removeprefix("tcp:")
    assert info["ops"]["dashboard"]["url"] == f"https://127.0.0.1:{dash_port}"

    # Without the settings, a driver and a thin client fail at once, naming them.
    for target in (f"'{address}'", f"'client://{info['client_address']}'"):
        t0 = time.monotonic()
        out = subprocess.run([sys.executable, "-c", f"import runtime; runtime.init({target})"],
                             env={**_without(cli.env, TLS_KEYS), "RUNTIME_CLUSTER_TOKEN": info["token"]},
                             capture_output=True, text=True, timeout=60)
        assert out.returncode != 0 and "RUNTIME_USE_TLS=1, RUNTIME_TLS_SERVER_CERT" in out.stderr, out.stderr
        assert time.monotonic() - t0 < 15

    cli.env.update(env)  # the joined node and the teardown's `runtime stop` use the environment
    cli.run("start", "--address", address, "--num-cpus", "1", "--resources", '{"far": 1}')
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    runtime.init(address="auto")
    wait_for(lambda: len([n for n in runtime.nodes() if n["Alive"]]) == 2, timeout=30, what="the joined node")

    @runtime.remote(resources={"far": 1})
    def far_array():
        import numpy as np
        return np.arange(5_000_000, dtype=np.int64)  # 40 MB: two TLS data streams between the nodes

    assert int(runtime.get(far_array.remote()).sum()) == 5_000_000 * 4_999_999 // 2

    # The thin client, the job API over HTTPS and the metrics endpoint, with our certificate.
    script = textwrap.dedent(f"""
        import runtime
        runtime.init("client://{info['client_address']}")
        print("client", runtime.get(runtime.remote(lambda: 41 + 1).remote()))
    """)
    assert "client 42" in cli.driver(script)
    from runtime.job_submission import JobStatus, JobSubmissionClient
    jobs = JobSubmissionClient(info["ops"]["dashboard"]["url"])
    job = jobs.submit_job(entrypoint="python -c \"print('hello over https')\"")
    wait_for(lambda: jobs.get_job_status(job) in (JobStatus.SUCCEEDED, JobStatus.FAILED), timeout=60, what="the job")
    assert jobs.get_job_status(job) == JobStatus.SUCCEEDED and "hello over https" in jobs.get_job_logs(job)
    node = next(n for n in runtime.nodes() if n["Alive"])
    metrics_url = f"https://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"
    with urllib.request.urlopen(metrics_url, context=_client_ctx(env), timeout=10) as resp:
        assert resp.status == 200 and b"ray_node" in resp.read()
    # The dashboard's /metrics scrapes both nodes' HTTPS endpoints with the cluster's certificate.
    with urllib.request.urlopen(f"https://127.0.0.1:{dash_port}/metrics", context=_client_ctx(env), timeout=30) as resp:
        text = resp.read().decode()
    assert "ray_dashboard_unreachable_nodes 0.0" in text and text.count("ray_node_cpu_count{") >= 2, text[-2000:]

    # Every TCP listener of every process of both nodes: plaintext, no certificate, or a
    # certificate of another authority are all refused; ours is accepted.
    listeners = _tcp_listeners(_cluster_processes(info))
    assert {("127.0.0.1", dash_port), ("127.0.0.1", int(address.rsplit(":", 1)[1]))} <= listeners
    assert len(listeners) >= 7, listeners  # control store, client server, dashboard, 2 x (node, data, metrics)
    no_cert, other_ca = _client_ctx(env, with_cert=False), _client_ctx({**rogue, "RUNTIME_TLS_CA_CERT":
                                                                        env["RUNTIME_TLS_CA_CERT"]})
    for addr in sorted(listeners):
        assert _plain_hello_refused(addr, info["token"]), f"{addr} answered plaintext"
        assert _tls_refused(addr, no_cert), f"{addr} accepted a client without a certificate"
        assert _tls_refused(addr, other_ca), f"{addr} accepted a certificate of another authority"
        with socket.create_connection(addr, timeout=5) as raw, _client_ctx(env).wrap_socket(raw) as s:
            assert s.version() in ("TLSv1.2", "TLSv1.3")
    runtime.shutdown()


def test_token_is_required_and_never_leaks(cli, monkeypatch):
    token = "0123abcd" * 4
    cli.env.update({"RUNTIME_CLUSTER_TOKEN": token, "RUNTIME_DASHBOARD_AUTH": "1"})
    dash_port = _free_port()
    cli.run("start", "--head", "--port", "0", "--client-server-port", "0", "--num-cpus", "1",
            "--dashboard-port", str(dash_port))
    with open(os.path.join(cli.tmpdir, "orrery", "current_cluster.json")) as f:
        info = json.load(f)
    url = f"http://127.0.0.1:{dash_port}"

    # On loopback, RUNTIME_DASHBOARD_AUTH=1 makes the dashboard ask for the token.
    for headers in ({}, {"Authorization": "Bearer " + "f" * 32}, {"Authorization": token}):
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(urllib.request.Request(url + "/api/jobs/", headers=headers), timeout=10)
        assert err.value.code == 401 and b"cluster's token" in err.value.read()
    with urllib.request.urlopen(urllib.request.Request(url + "/api/jobs/", headers={
            "Authorization": f"Bearer {token}"}), timeout=10) as resp:
        assert resp.status == 200
    # Our client finds the token of a cluster of this user on this machine by itself.
    from runtime.job_submission import JobStatus, JobSubmissionClient
    jobs = JobSubmissionClient(url)
    job = jobs.submit_job(entrypoint="python -c \"import os; print('env has token', 'RUNTIME_CLUSTER_TOKEN' in "
                                     "os.environ)\"")
    wait_for(lambda: jobs.get_job_status(job) in (JobStatus.SUCCEEDED, JobStatus.FAILED), timeout=60, what="the job")
    assert "env has token False" in jobs.get_job_logs(job)

    monkeypatch.delenv("RUNTIME_CLUSTER_TOKEN", raising=False)
    runtime.init(address="auto")

    @runtime.remote
    def what_a_task_sees():
        return dict(os.environ), open("/proc/self/cmdline", "rb").read()

    environ, cmdline = runtime.get(what_a_task_sees.remote())
    assert token not in json.dumps(environ) and token.encode() not in cmdline

    # No process of the cluster has it on its command line (`ps`) or in its environment.
    procs = _cluster_processes(info)
    assert len(procs) >= 3
    for p in procs:
        try:
            words, penv = " ".join(p.cmdline()), p.environ()
        except psutil.NoSuchProcess:
            continue
        assert token not in words, f"pid {p.pid} has the token on its command line"
        assert token not in json.dumps(penv), f"pid {p.pid} has the token in its environment"
    runtime.shutdown()
    # Nor is it in any log.
    session = info["session_dir"]
    for root, _dirs, files in os.walk(os.path.join(session, "logs")):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                assert token.encode() not in f.read(), f"{name} holds the token"
