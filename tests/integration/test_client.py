"""Thin clients (`runtime.init("client://HOST:PORT")`): a head started with `runtime start --head`
serves them; each client is a separate process that has no node of its own, and its calls go
through its proxy on the head. Also from a second host (a network namespace), and through the
notebook magics."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

import runtime
from runtime._testing.netns import HEAD_IP
from runtime._testing.sync import wait_for
from runtime.util import state

pytestmark = pytest.mark.slow


def _head(cli, *extra: str) -> dict:
    cli.run("start", "--head", "--port", "0", "--client-server-port", "0", "--num-cpus", "2", *extra)
    with open(os.path.join(cli.tmpdir, "orrery", "current_cluster.json")) as f:
        return json.load(f)


def _proxies(info: dict) -> list[psutil.Process]:
    gcs = psutil.Process(info["pids"]["gcs"])
    return [p for p in gcs.children() if "runtime.client.proxy" in " ".join(p.cmdline())]


CLIENT_SCRIPT = """
import os, sys, numpy as np, runtime
from runtime.util import state
from runtime._testing.sync import wait_for
ctx = runtime.init("client://{address}")
assert ctx.address_info["client"] and not os.path.exists(ctx.address_info["session_dir"] + "/x")

@runtime.remote
def double(x):
    print("task saw", x)
    return x * 2

print(runtime.get([double.remote(i) for i in range(4)]), flush=True)
print("after get", flush=True)
big = runtime.put(np.arange(2_000_000))  # 16 MB: over a frame's inline size, into the head's store
print("sum", int(runtime.get(double.remote(big)).sum()))

@runtime.remote
class Counter:
    def __init__(self, start):
        self.n = start
    def add(self, k=1):
        self.n += k
        return self.n
    def pid(self):
        return os.getpid()

c = Counter.remote(10)
print("counter", runtime.get([c.add.remote() for _ in range(5)]))

@runtime.remote
def use(counter):  # a handle passed on to a task
    return runtime.get(counter.add.remote(100))
print("via task", runtime.get(use.remote(c)))

@runtime.remote
def fail():
    raise KeyError("no such thing")
try:
    runtime.get(fail.remote())
except KeyError as e:
    print("error kept its class", "no such thing" in str(e))

@runtime.remote
def make_inner():
    return [runtime.put("inner value")]
inner = runtime.get(make_inner.remote())
print("nested", runtime.get(inner[0]))
ready, rest = runtime.wait([double.remote(7), double.remote(8)], num_returns=2, timeout=30)
print("wait", len(ready), len(rest))
try:
    runtime.get(runtime.put(1).__class__(b"x" * 20, ctx.address_info["gcs_address"]), timeout=0.5)
except Exception as e:
    print("unknown ref:", type(e).__name__)

# Freed when the client drops its last ref (its proxy holds it until then).
alive = lambda oid: any(o["object_id"] == oid for o in state.list_objects())
oid = big.hex()
assert alive(oid)
del big
wait_for(lambda: not alive(oid), timeout=20, what="the object dropped by the client to be freed")
print("freed")

# An actor whose only handle goes out of scope in the client is stopped (c was passed to a
# task, so copies of its handle may live on: it stays, as with a local driver).
d = Counter.remote(0)
runtime.get(d.add.remote())
aid = d._actor_id
del d
wait_for(lambda: any(a["actor_id"] == aid and a["state"] == "DEAD" for a in state.list_actors()), timeout=20,
         what="the dropped actor to stop")
print("actor stopped")
print("nodes", len(runtime.nodes()), runtime.cluster_resources()["CPU"])
runtime.shutdown()
"""


def test_thin_client_runs_tasks_actors_and_objects_through_its_proxy(cli):
    info = _head(cli)
    out = cli.driver(CLIENT_SCRIPT.format(address=info["client_address"]), timeout=120)
    lines = out.splitlines()
    assert "[0, 2, 4, 6]" in lines
    # Task output is forwarded before the reply, so it is printed before get() returns.
    first = [i for i, ln in enumerate(lines) if ln.split(") ")[-1] in {f"task saw {k}" for k in range(4)}]
    assert len(first) == 4 and max(first) < lines.index("after get")
    assert "(double pid=" in out
    assert "sum 3999998000000" in lines
    assert "counter [11, 12, 13, 14, 15]" in lines and "via task 115" in lines
    assert "error kept its class True" in lines
    assert "nested inner value" in lines and "wait 2 0" in lines
    assert "freed" in lines and "actor stopped" in lines and "nodes 1 2.0" in lines
    # The client left: its proxy is gone too.
    wait_for(lambda: not _proxies(info), timeout=20, what="the proxy to exit after its client left")


def test_a_killed_client_takes_its_proxy_and_actors_with_it(cli):
    info = _head(cli)
    client = cli.start_driver(f"""
        import sys, runtime
        runtime.init("client://{info['client_address']}")
        @runtime.remote
        class Holder:
            def ping(self):
                return "pong"
        h = Holder.remote()
        print(runtime.get(h.ping.remote()), h._actor_id, flush=True)
        sys.stdin.read()  # until killed
    """)
    try:
        pong, actor_id = client.stdout.readline().split()
        assert pong == "pong"
        assert len(_proxies(info)) == 1
        client.send_signal(signal.SIGKILL)
        client.wait(10)
        wait_for(lambda: not _proxies(info), timeout=20, what="the proxy to exit after its client was killed")
        runtime.init(address="auto")
        wait_for(lambda: any(a["actor_id"] == actor_id and a["state"] == "DEAD" for a in state.list_actors()),
                 timeout=20, what="the killed client's actor to stop")
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
        client.stdout.close()
        client.stderr.close()
        client.stdin.close()


def test_wrong_address_and_wrong_token_are_clear_errors_within_seconds(cli):
    info = _head(cli)
    started = time.monotonic()
    out = cli.driver("""
        import os, runtime
        for address, token in [("client://127.0.0.1:9", "x"), ("client://{addr}", "not-the-token"),
                               ("client://nonsense", "x")]:
            os.environ["RUNTIME_CLUSTER_TOKEN"] = token
            try:
                runtime.init(address)
            except (ConnectionError, ValueError) as e:
                print(type(e).__name__, "|", e)
    """.replace("{addr}", info["client_address"]), timeout=60)
    assert time.monotonic() - started < 30
    refused, bad_token, malformed = out.splitlines()
    assert refused.startswith("ConnectionError | Nothing accepts thin clients at client://127.0.0.1:9")
    assert bad_token.startswith("ConnectionError |") and "token" in bad_token
    assert malformed.startswith("ValueError | Invalid client address 'client://nonsense'")
    wait_for(lambda: not _proxies(info), timeout=20, what="the refused client's proxy to exit")


def test_notebook_magics_over_a_thin_client(cli):
    """%cluster connect client://..., a %%remote cell with live output and names pulled back,
    %cluster status, %cluster stop — in a real IPython shell in a client process."""
    info = _head(cli)
    out = cli.driver(f"""
        from IPython.core.interactiveshell import InteractiveShell
        ip = InteractiveShell.instance()
        ip.run_line_magic("load_ext", "kernel_ext")
        ip.run_line_magic("cluster", "connect client://{info['client_address']}")
        ip.user_ns["x"] = 20
        r = ip.run_cell("%%remote\\nprint('remote line')\\ny = x + 1\\ny * 2", store_history=True)
        assert r.error_in_exec is None, r.error_in_exec
        print("result", r.result, "y", ip.user_ns["y"])
        ip.run_line_magic("cluster", "status")
        ip.run_line_magic("cluster", "stop")
        import runtime
        print("connected after stop:", runtime.is_initialized())
    """, timeout=120)
    assert "remote line" in out and "result 42 y 21" in out
    assert "connected after stop: False" in out
    wait_for(lambda: not _proxies(info), timeout=20, what="the proxy to exit after %cluster stop")


def test_code_the_head_cannot_import_fails_the_call_not_the_session(tmp_path, cli):
    """A function from a module that exists only beside the client cannot be unpickled by the
    proxy: get() raises that error, and the session goes on working."""
    info = _head(cli)
    (tmp_path / "only_here.py").write_text("def f(x):\n    return x + 1\n")
    out = cli.driver(f"""
        import sys
        sys.path.insert(0, {str(tmp_path)!r})
        import runtime, only_here
        runtime.init("client://{info['client_address']}")
        try:
            runtime.get(runtime.remote(only_here.f).remote(1), timeout=30)
        except ModuleNotFoundError as e:
            print("raised:", e)
        print("still works:", runtime.get(runtime.remote(lambda x: x * 3).remote(2)))
    """, timeout=60)
    assert "raised: No module named 'only_here'" in out and "still works: 6" in out


@pytest.mark.fault
def test_a_client_on_another_host_reaches_the_head_only_through_its_client_port(netns, tmp_path, cli):
    """The client runs in its own network namespace with a TMPDIR of its own: it can reach the
    head's address but has no node, no session files and no token but the one it is given."""
    name, _host_if = netns
    info = _head(cli, "--node-ip", HEAD_IP)
    assert info["client_address"].startswith(HEAD_IP + ":")
    far_env = {**cli.env, "TMPDIR": str(tmp_path / "far-host"), "RUNTIME_CLUSTER_TOKEN": info["token"]}
    os.makedirs(far_env["TMPDIR"])
    script = textwrap.dedent(f"""
        import numpy as np, runtime
        runtime.init("client://{info['client_address']}")
        @runtime.remote
        def where(a):
            import socket
            print("running on the head")
            return int(a.sum()), np.ones(1_000_000)
        total, back = runtime.get(where.remote(runtime.put(np.ones(3_000_000))))
        print("far", total, int(back.sum()))
        runtime.shutdown()
    """)
    done = subprocess.run(["ip", "netns", "exec", name, sys.executable, "-c", script], env=far_env,
                          capture_output=True, text=True, timeout=90, check=False)
    assert done.returncode == 0, done.stderr
    assert "running on the head" in done.stdout and "far 3000000 1000000" in done.stdout
    wait_for(lambda: not _proxies(info), timeout=20, what="the far client's proxy to exit")
