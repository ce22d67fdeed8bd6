"""The command line against real processes: `runtime start --head`, `status`,
`memory`, `stop`, and drivers joining with `init(address="auto")`.

Each test gets its own TMPDIR, set both in the subprocesses' environment and in
this driver's, so the session file that `address="auto"` reads is isolated from
other clusters on the machine. The `cli` fixture uses a short directory under
/tmp; `long_tmpdir_cli` uses pytest's (long) tmp_path, which is what a user with
a deep TMPDIR (macOS, CI runners) has, and one test checks that case alone so
that a path-length problem does not mask the other contracts.
"""

from __future__ import annotations

import json
import socket
import sys

import cloudpickle
import pytest

import runtime
from runtime._testing.sync import wait_for

cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = pytest.mark.timeout(120)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_open(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


@runtime.remote
def square(x):
    return x * x


def test_start_head_status_memory_stop_when_driver_joins_with_auto(cli):
    port = _free_port()
    cli.run(
        "start", "--head", "--port", str(port), "--num-cpus", "2", "--num-gpus", "1",
        "--resources", json.dumps({"custom": 3}),
        "--object-store-memory", str(100 * 1024 * 1024),
    )
    assert _port_open(port), f"nothing listens on --port {port} after start"

    status = cli.run("status")
    assert "CPU" in status.stdout and "custom" in status.stdout, status.stdout

    ctx = runtime.init(address="auto")
    assert ctx is not None
    total = runtime.cluster_resources()
    assert total["CPU"] == 2
    assert total["GPU"] == 1
    assert total["custom"] == 3
    assert runtime.get([square.remote(i) for i in range(4)], timeout=60) == [0, 1, 4, 9]
    ref = runtime.put(b"x" * (1024 * 1024))

    memory = cli.run("memory")
    assert ref.hex() in memory.stdout, memory.stdout
    del ref
    runtime.shutdown()

    cli.run("stop")
    wait_for(lambda: not _port_open(port), timeout=10, what=f"port {port} closed after stop")


def test_start_and_join_work_when_tmpdir_path_long(long_tmpdir_cli):
    cli = long_tmpdir_cli
    assert len(cli.tmpdir) > 60
    cli.run("start", "--head", "--num-cpus", "1", "--port", str(_free_port()))
    runtime.init(address="auto")
    assert runtime.get(square.remote(3), timeout=60) == 9
    runtime.shutdown()
    cli.run("stop")


def test_stop_succeeds_when_no_cluster_running(cli):
    cli.run("stop")


def test_init_auto_raises_connection_error_when_no_cluster(cli):
    with pytest.raises(ConnectionError):
        runtime.init(address="auto")
    assert not runtime.is_initialized()


_DETACHED_CREATOR = """
    import runtime

    runtime.init(address="auto", namespace="keepers")

    @runtime.remote
    class Keeper:
        def __init__(self):
            self.items = []

        def add(self, item):
            self.items.append(item)
            return len(self.items)

        def items_list(self):
            return self.items

    keeper = Keeper.options(name="keeper", lifetime="detached").remote()
    assert runtime.get([keeper.add.remote(i) for i in range(3)], timeout=60) == [1, 2, 3]
    print("created", flush=True)
"""


def test_detached_actor_outlives_driver_when_joined_by_name(cli):
    cli.run("start", "--head", "--num-cpus", "2", "--port", str(_free_port()))
    assert "created" in cli.driver(_DETACHED_CREATOR)

    runtime.init(address="auto", namespace="keepers")
    keeper = runtime.get_actor("keeper")
    assert runtime.get(keeper.items_list.remote(), timeout=60) == [0, 1, 2]
    assert runtime.get(keeper.add.remote("from-test"), timeout=30) == 4
    runtime.shutdown()

    # Visible from another namespace by naming the namespace explicitly.
    runtime.init(address="auto")
    keeper = runtime.get_actor("keeper", namespace="keepers")
    assert runtime.get(keeper.items_list.remote(), timeout=30) == [0, 1, 2, "from-test"]
    runtime.kill(keeper)

    def name_released():
        try:
            runtime.get_actor("keeper", namespace="keepers")
        except ValueError:
            return True
        return False

    wait_for(name_released, timeout=10, what="the killed detached actor's name released")


_NAMESPACE_HOLDER = """
    import sys
    import runtime

    runtime.init(address="auto")

    @runtime.remote
    class Box:
        def __init__(self, value):
            self.value = value

        def get(self):
            return self.value

    private = Box.options(name="private").remote("anonymous-namespace")
    public = Box.options(name="public", namespace="shared").remote("shared-namespace")
    runtime.get([private.get.remote(), public.get.remote()], timeout=60)
    print(runtime.get_runtime_context().namespace, flush=True)
    sys.stdin.read()
"""


def test_named_actors_isolated_by_namespace_between_drivers(cli):
    cli.run("start", "--head", "--num-cpus", "2", "--port", str(_free_port()))
    holder = cli.start_driver(_NAMESPACE_HOLDER)
    try:
        other_namespace = holder.stdout.readline().strip()
        assert other_namespace, f"holder driver failed: {holder.stderr.read()}"

        runtime.init(address="auto")
        assert runtime.get_runtime_context().namespace != other_namespace
        with pytest.raises(ValueError):
            runtime.get_actor("private")
        public = runtime.get_actor("public", namespace="shared")
        assert runtime.get(public.get.remote(), timeout=30) == "shared-namespace"
        runtime.shutdown()

        runtime.init(address="auto", namespace="shared")
        assert runtime.get(runtime.get_actor("public").get.remote(), timeout=30) == (
            "shared-namespace"
        )
        runtime.shutdown()
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert holder.returncode == 0, holder.stderr.read()


def test_status_shows_placement_groups_with_their_nodes_and_pending_ones(cli):
    cli.run("start", "--head", "--port", str(_free_port()), "--num-cpus", "2")
    out = cli.driver("""
        import runtime
        from runtime.util import placement_group
        runtime.init(address="auto")
        pg = placement_group([{"CPU": 1}], name="placed", lifetime="detached")
        pending = placement_group([{"CPU": 8}], name="toobig", lifetime="detached")
        assert pg.wait(20)
        print(runtime.get_runtime_context().get_node_id()[:8])
        runtime.shutdown()
    """)
    node = out.strip().splitlines()[-1]
    status = cli.run("status").stdout
    assert "Placement groups: 2" in status
    assert f"placed PACK CREATED  0:{node}" in status
    assert "toobig PACK PENDING  infeasible" in status
    assert "Pending demand: none" in status


def test_start_address_joins_a_node_with_custom_resources_and_stop_ends_it(cli):
    """As in the book: `ray start --address ... --resources '{"x86": 1}'` on another node."""
    port = _free_port()
    cli.run("start", "--head", "--port", str(port), "--num-cpus", "1")
    joined = cli.run("start", "--address", f"127.0.0.1:{port}", "--num-cpus", "2",
                     "--resources", json.dumps({"x86": 1}), "--labels", json.dumps({"zone": "b"}))
    assert "joined the cluster" in joined.stdout, joined.stdout
    out = cli.driver("""
        import runtime
        runtime.init(address="auto")
        @runtime.remote(resources={"x86": 1})
        def on_x86():
            return runtime.get_runtime_context().get_node_id()
        nodes = {n["NodeID"]: n for n in runtime.nodes() if n["Alive"]}
        where = runtime.get(on_x86.remote())
        print(len(nodes), runtime.cluster_resources()["CPU"], nodes[where]["IsHead"])
    """)
    assert out.split() == ["2", "3.0", "False"], out
    status = cli.run("status")
    assert "Nodes: 2 alive" in status.stdout and "x86: 0 / 1" in status.stdout, status.stdout
    assert "zone=b" in status.stdout, status.stdout
    bad = cli.run("start", "--address", "127.0.0.1:1", check=False)
    assert bad.returncode == 1 and "No cluster started on this machine listens" in bad.stderr, bad.stderr
    cli.run("stop")
    wait_for(lambda: not _port_open(port), timeout=10, what=f"port {port} closed after stop")


# tmp_path before cli: pytest roots tmp_path where TMPDIR points when it is first made.
def test_head_takes_rays_start_flags_and_a_detached_actor_outlives_its_driver(tmp_path, cli):
    """`ray start --head` flags a Ray user passes (issue 11): accepted, recorded, and the
    cluster they start serves a detached named actor to a second driver after the first exits."""
    temp_dir = tmp_path / "ray-temp"
    dashboard_port, metrics_port = _free_port(), _free_port()
    cli.run("start", "--head", "--num-cpus", "2", "--port", str(_free_port()), "--dashboard-port",
            str(dashboard_port), "--dashboard-host", "127.0.0.1", "--include-dashboard", "false",
            "--metrics-export-port", str(metrics_port), "--node-ip-address", "127.0.0.1",
            "--temp-dir", str(temp_dir), "--disable-usage-stats")
    from runtime._core import launcher
    info = launcher.read_current_cluster()
    assert info["session_dir"].startswith(str(temp_dir)) and (temp_dir / info["session_name"] / "token").exists()
    assert info["ops"] == {"dashboard": {"enabled": False, "host": "127.0.0.1", "port": dashboard_port},
                           "metrics_export_port": metrics_port}
    status = cli.run("status").stdout
    assert "Dashboard: off" in status and f"metrics http://127.0.0.1:{metrics_port}/metrics" in status

    assert "created" in cli.driver(_DETACHED_CREATOR)  # this driver has exited when it returns
    got = cli.driver("""
        import runtime
        runtime.init(address="auto", namespace="keepers")
        keeper = runtime.get_actor("keeper")
        print("items", runtime.get(keeper.items_list.remote(), timeout=60), flush=True)
        runtime.kill(keeper)
    """)
    assert "items [0, 1, 2]" in got
    cli.run("stop")


def test_head_records_the_dashboard_port_and_rejects_a_bad_bool(cli):
    port = _free_port()
    cli.run("start", "--head", "--num-cpus", "1", "--port", str(_free_port()), "--dashboard-port", str(port))
    assert f"Dashboard: http://127.0.0.1:{port}" in cli.run("status").stdout
    cli.run("stop")
    bad = cli.run("start", "--head", "--include-dashboard", "maybe", check=False)
    assert bad.returncode == 2 and "expected true or false, got 'maybe'" in bad.stderr


def test_cli_rough_edges(cli):
    """Issue 16.7: a taken client port falls back without leaving the control store's port
    bound; `| head` is quiet; an unknown job is one line; a job's `python` is the head's;
    pending demand is counted."""
    import os
    import subprocess

    from runtime.client.protocol import DEFAULT_PORT
    taken = socket.socket()
    try:
        taken.bind(("127.0.0.1", DEFAULT_PORT))
        taken.listen()
    except OSError:
        pass  # already taken by something else: the same case
    port = _free_port()
    try:
        # PATH without this interpreter's directory, as a head started from an unactivated venv has
        env = dict(cli.env, PATH="/usr/bin:/bin")
        started = subprocess.run([sys.executable, "-m", "runtime", "start", "--head", "--port", str(port),
                                  "--num-cpus", "1"], env=env, capture_output=True, text=True, timeout=60)
        assert started.returncode == 0, started.stderr
        assert "Thin clients" in started.stdout and f":{DEFAULT_PORT}" not in started.stdout
    finally:
        taken.close()

    listing = subprocess.Popen([sys.executable, "-m", "runtime", "list", "nodes"], env=cli.env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    listing.stdout.close()  # the reader leaves at once, as `| head -0` does
    assert listing.wait(60) == 0 and b"Traceback" not in listing.stderr.read()
    listing.stderr.close()

    unknown = cli.run("job", "logs", "UNKNOWN", check=False)
    assert unknown.returncode == 1 and "Traceback" not in unknown.stderr
    assert "No job 'UNKNOWN' on this cluster" in unknown.stderr

    which = cli.run("job", "submit", "--", "sh", "-c", "command -v python").stdout
    assert os.path.join(os.path.dirname(sys.executable), "python") in which, which

    held = cli.start_driver("""
        import sys
        import runtime
        runtime.init(address="auto")
        @runtime.remote(resources={"missing": 1})
        def never():
            return 1
        refs = [never.remote() for _ in range(3)]
        print("submitted", flush=True)
        sys.stdin.read()
    """)
    try:
        assert held.stdout.readline().strip() == "submitted"
        wait_for(lambda: "3 pending tasks: {CPU: 1, missing: 1}" in cli.run("status").stdout, timeout=20,
                 what="the three waiting tasks counted in `runtime status`")
    finally:
        held.stdin.close()
        held.wait(30)
    cli.run("stop")
    wait_for(lambda: not _port_open(port), timeout=10, what=f"port {port} closed after stop")
