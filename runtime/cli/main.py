"""`runtime ...` / `python -m runtime ...`: start, stop, status, memory, list, job, demo."""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
import time
from typing import Any, Callable

from .._core import launcher
from ..client.protocol import DEFAULT_PORT as DEFAULT_CLIENT_PORT


def _cmd_start(args: argparse.Namespace) -> int:
    from ..config import SystemConfig
    problem = _security_settings(args)
    if problem:
        print(problem, file=sys.stderr)
        return 2
    overrides = json.loads(args.system_config) if args.system_config else {}
    if args.object_spill_dir:
        overrides["object_spilling_directory"] = args.object_spill_dir
    if args.storage is not None:
        overrides["gcs_storage"] = args.storage
    if args.isolate_namespaces:
        if not args.head:
            print("--isolate-namespaces is a setting of the head, whose control store keeps the named actors: "
                  "give it with `runtime start --head`.", file=sys.stderr)
            return 2
        overrides["isolate_namespaces"] = True
    config = SystemConfig.resolve(overrides)
    if args.restart:
        return _restart_head(config)
    if not args.head:
        code = _join(args)
        return _block(None) if code == 0 and args.block else code
    cluster_config = None
    if args.autoscaling_config:
        from ..autoscaler.config import load_cluster_config
        try:
            cluster_config = load_cluster_config(args.autoscaling_config)
        except ValueError as e:
            print(f"--autoscaling-config: {e}", file=sys.stderr)
            return 2
    code = _start_head(config, num_cpus=args.num_cpus, num_gpus=args.num_gpus,
                       resources=_parse_resources(args.resources), object_store_memory=args.object_store_memory,
                       port=args.port, autoscaling_config=args.autoscaling_config, node_ip=args.node_ip,
                       labels=_parse_resources(args.labels, "--labels"),
                       token=args.token or os.environ.get("RUNTIME_CLUSTER_TOKEN"),
                       client_port=None if args.client_server_port < 0 else args.client_server_port,
                       temp_dir=args.temp_dir, ops=_ops_settings(args))
    if code != 0:
        return code
    if cluster_config is not None:
        print(f"Autoscaling with {args.autoscaling_config} ({cluster_config.provider.type} provider).")
    return _block(launcher.read_current_cluster()) if args.block else 0


def _start_head(config: Any, *, num_cpus: float | None, num_gpus: float | None, resources: dict | None,
                object_store_memory: int | None, port: int, autoscaling_config: str | None = None,
                node_ip: str = "127.0.0.1", token: str | None = None, labels: dict | None = None,
                client_port: int | None = None, temp_dir: str | None = None, ops: dict | None = None) -> int:
    if launcher.read_current_cluster() is not None:
        print("A cluster is already running on this machine; `runtime stop` it first.", file=sys.stderr)
        return 1
    start = dict(num_cpus=num_cpus, num_gpus=num_gpus, resources=resources, object_store_memory=object_store_memory,
                 config=config, persistent=True, port=port, node_ip=node_ip, token=token, labels=labels,
                 temp_dir=temp_dir, ops=ops)
    try:
        cluster = launcher.start_cluster(**start, client_port=client_port)
    except launcher.PortTaken as e:
        print(e.strerror, file=sys.stderr)
        return 1
    except OSError as e:
        if client_port != DEFAULT_CLIENT_PORT or e.errno != errno.EADDRINUSE:
            raise
        # The default client port is taken (another cluster on this machine): any free one will do.
        cluster = launcher.start_cluster(**start, client_port=0)
    if autoscaling_config:
        launcher.start_monitor(cluster, os.path.abspath(autoscaling_config))
    launcher.write_current_cluster(cluster)
    # Ready when a driver can join and sees the node.
    import runtime
    deadline = time.monotonic() + config.startup_timeout_s
    while True:
        try:
            runtime.init(address="auto")
            break
        except ConnectionError:
            if time.monotonic() > deadline:
                print(f"The cluster did not come up; see {cluster.session_dir}/logs", file=sys.stderr)
                launcher.stop_persistent(cluster.info())
                return 1
    res = runtime.cluster_resources()
    runtime.shutdown()
    addr = cluster.gcs_address.removeprefix("tcp:")
    print(f"Started a cluster at {addr} (session {cluster.session_dir}; its token, for nodes joining from "
          f"other machines, is in {cluster.session_dir}/token).")
    print(f"Resources: {json.dumps(res)}")
    print("Join it from Python with runtime.init(address='auto'); stop it with `runtime stop`.")
    dashboard = (cluster.ops.get("dashboard") or {}).get("url")
    if dashboard:
        print(f"Dashboard and job API: {dashboard} (e.g. `ray job submit --address {dashboard} -- python x.py`).")
    if cluster.client_address:
        print(f"Thin clients (notebooks on other machines): runtime.init('client://{cluster.client_address}') "
              "with RUNTIME_CLUSTER_TOKEN set to the token.")
    return 0


def _security_settings(args: argparse.Namespace) -> str:
    """`--tls-cert/--tls-key/--tls-ca` and `--token-file` become the environment every process
    of the node inherits (runtime/rpc/tls.py), never command-line words of those processes.
    Returns what is wrong, or ""."""
    from ..rpc import tls
    tls_flags = {"RUNTIME_TLS_SERVER_CERT": args.tls_cert, "RUNTIME_TLS_SERVER_KEY": args.tls_key,
                 "RUNTIME_TLS_CA_CERT": args.tls_ca}
    if any(tls_flags.values()):
        if not all(tls_flags.values()):
            return "Mutual TLS needs all three of --tls-cert, --tls-key and --tls-ca."
        os.environ.update({k: os.path.abspath(v) for k, v in tls_flags.items()}, RUNTIME_USE_TLS="1")
    try:
        tls.settings()
    except tls.TlsConfigError as e:
        return str(e)
    if args.token_file:
        try:
            with open(args.token_file) as f:
                args.token = f.read().strip()
        except OSError as e:
            return f"--token-file {args.token_file}: {e.strerror}."
        if not args.token:
            return f"--token-file {args.token_file} is empty: it must hold the cluster's token."
    elif args.token:
        print("Note: --token is visible to every user of this machine in `ps`; prefer RUNTIME_CLUSTER_TOKEN or "
              "--token-file.", file=sys.stderr)
    return ""


def _ops_settings(args: argparse.Namespace) -> dict:
    """The operations-plane flags of `ray start --head`, recorded with the cluster (the dashboard
    and the metrics exporter read them from there)."""
    return {"dashboard": {"enabled": args.include_dashboard, "host": args.dashboard_host,
                          "port": args.dashboard_port},
            "metrics_export_port": args.metrics_export_port}


def _bool_arg(text: str) -> bool:
    """Ray's `--include-dashboard BOOL` (click's bool: true/false, 1/0, yes/no, on/off)."""
    value = {"true": True, "1": True, "yes": True, "y": True, "on": True,
             "false": False, "0": False, "no": False, "n": False, "off": False}.get(text.strip().lower())
    if value is None:
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return value


def _restart_head(config: Any) -> int:
    """`runtime start --head --restart`: the control store of the running session died; start it
    again on its port. It reads its tables back; nodes and drivers reconnect."""
    info = launcher.read_current_cluster_file()
    if info is None:
        print("No cluster was started on this machine (no current-cluster file); nothing to restart.", file=sys.stderr)
        return 1
    if launcher._gcs_alive(info):
        print("The control store of the current cluster is running; there is nothing to restart.", file=sys.stderr)
        return 1
    if (info.get("ops") or {}).get("isolate_namespaces") and not config.isolate_namespaces:
        import dataclasses  # the restarted control store isolates namespaces as the first did
        config = dataclasses.replace(config, isolate_namespaces=True)
    cluster = launcher.attach(info, config)
    launcher.restart_gcs(cluster)
    info["pids"]["gcs"] = cluster.procs["gcs"].pid
    launcher.write_current_cluster_info(info)
    print(f"Restarted the control store at {info['gcs_address'].removeprefix('tcp:')} (pid "
          f"{info['pids']['gcs']}); it recovers its tables and the nodes reconnect.")
    return 0


def _block(info: dict | None) -> int:
    """--block: stay in the foreground while the cluster runs (a container's main process);
    SIGTERM stops it."""
    import signal as _signal
    stop = []
    _signal.signal(_signal.SIGTERM, lambda *_: stop.append(1))
    try:
        while not stop:
            current = launcher.read_current_cluster()
            if info is not None and current is None:
                return 1  # the head went away
            time.sleep(1.0)  # a supervising loop's period, not a synchronisation
    except KeyboardInterrupt:
        pass
    if info is not None:
        launcher.stop_persistent(info)
    return 0


def _cmd_up(args: argparse.Namespace) -> int:
    """`runtime up cluster.yaml`: a head with the head node type's resources, and the autoscaler
    that adds and removes worker nodes of the other types from pending demand."""
    from ..autoscaler.config import load_cluster_config
    from ..config import SystemConfig
    try:
        cluster = load_cluster_config(args.config)
    except ValueError as e:
        print(e, file=sys.stderr)
        return 2
    if cluster.provider.type != "local":
        print(f"`runtime up` starts local clusters; {args.config} has provider.type "
              f"{cluster.provider.type!r}. For Kubernetes apply deploy/kubernetes/ (see docs/autoscaler.md).",
              file=sys.stderr)
        return 2
    head = dict(cluster.node_types[cluster.head_node_type].resources)
    code = _start_head(SystemConfig.resolve(), num_cpus=head.pop("CPU", None), num_gpus=head.pop("GPU", None),
                       resources=head or None, port=args.port,
                       object_store_memory=cluster.object_store_memory.get(cluster.head_node_type),
                       autoscaling_config=args.config)
    if code == 0:
        print(f"Cluster {cluster.cluster_name!r} is up; the autoscaler adds nodes of "
              f"{', '.join(t.name for t in cluster.worker_types()) or 'no'} type(s) as work waits. "
              f"`runtime down {args.config}` stops it.")
    return code


def _cmd_down(args: argparse.Namespace) -> int:
    from ..autoscaler.config import load_cluster_config
    try:
        load_cluster_config(args.config)
    except ValueError as e:
        print(e, file=sys.stderr)
        return 2
    return _cmd_stop(args)


def _parse_resources(text: str | None, flag: str = "--resources") -> dict | None:
    try:
        value = json.loads(text) if text else None
    except json.JSONDecodeError as e:
        raise SystemExit(f"{flag} must be a JSON object like '{{\"custom\": 1}}': {e}") from None
    if value is not None and not isinstance(value, dict):
        raise SystemExit(f"{flag} must be a JSON object like '{{\"custom\": 1}}', got {text!r}")
    return value


def _join(args: argparse.Namespace) -> int:
    """`runtime start --address HOST:PORT`: one more node manager for a running head."""
    from ..config import SystemConfig
    from .._core.session import find_cluster
    if not args.address:
        print("Give --head to start a head node, or --address HOST:PORT to join a running one.", file=sys.stderr)
        return 2
    token = args.token or os.environ.get("RUNTIME_CLUSTER_TOKEN")
    node_ip = args.node_ip
    if token:  # a head on another machine: a session directory of our own, the head's token
        info = launcher.remote_cluster_info(args.address, token)
        if node_ip in ("127.0.0.1", "localhost"):
            node_ip = launcher.route_ip(args.address)
    else:
        try:
            info = find_cluster(args.address)
        except ConnectionError as e:
            print(f"{e} To join a head on another machine, pass its token: --token TOKEN (or RUNTIME_CLUSTER_TOKEN; "
                  "`runtime start --head` prints where it is kept).", file=sys.stderr)
            return 1
    config = SystemConfig.resolve(json.loads(args.system_config) if args.system_config else {})
    cluster = launcher.attach(info, config)
    try:
        node = launcher.add_node(cluster, num_cpus=args.num_cpus, num_gpus=args.num_gpus,
                                 resources=_parse_resources(args.resources), object_store_memory=args.object_store_memory,
                                 node_ip=node_ip, labels=_parse_resources(args.labels, "--labels"),
                                 metrics_export_port=args.metrics_export_port)
    except launcher.PortTaken as e:
        print(e.strerror, file=sys.stderr)
        return 1
    deadline = time.monotonic() + config.startup_timeout_s
    while not any(n["node_id"] == node["node_id"] and n["alive"] for n in
                  launcher.gcs_request(info["gcs_address"], info["token"], {"op": "list_nodes"})["nodes"]):
        if time.monotonic() > deadline or cluster.procs[node["name"]].poll() is not None:
            print(f"The node did not join; see {info['session_dir']}/logs/{node['name']}.log", file=sys.stderr)
            return 1
        time.sleep(0.05)  # polling a condition with a deadline
    if token:
        launcher.write_joined_node_info(info, node)
    print(f"Node {node['node_id'][:12]} joined the cluster at {args.address} with "
          f"{json.dumps({k: v for k, v in node['resources'].items() if k != 'memory'})}"
          + (f" and {args.resources}" if args.resources else "") + ". It stops with `runtime stop`.")
    return 0


def _cmd_stop(args: argparse.Namespace) -> int:
    info = launcher.read_current_cluster()
    if info is None:
        print("No running cluster was found on this machine.")
        return 0
    pids = launcher.stop_persistent(info)
    print(f"Stopped the cluster (pids {', '.join(map(str, pids))}).")
    return 0


def _read_cluster(read: Callable[[], Any]) -> Any:
    """Join the `runtime start --head` cluster, return read(), leave. None (said why) if none runs."""
    if launcher.read_current_cluster() is None:
        print("No running cluster was found on this machine. Start one with `runtime start --head`.")
        return None
    import runtime
    runtime.init(address="auto")
    try:
        return read()
    finally:
        runtime.shutdown()


def _cmd_status(args: argparse.Namespace) -> int:
    import runtime

    from ..util import state

    def read() -> tuple:
        return (runtime.nodes(), runtime.cluster_resources(), runtime.available_resources(),
                state.object_store_stats(), state.list_placement_groups(),
                [d for n in state.node_stats() for d in (n.get("pending_demand") or [])], state.runtime_env_cache())

    snapshot = _read_cluster(read)
    if snapshot is None:
        return 1
    nodes, total, avail, stores, groups, demand, env_cache = snapshot
    info = launcher.read_current_cluster() or {}
    dashboard = (info.get("ops") or {}).get("dashboard")
    if dashboard:
        print(f"Dashboard: {dashboard['url']}" if dashboard.get("url") else
              "Dashboard: off (--include-dashboard false, or aiohttp is not installed)")
    print(f"Nodes: {sum(1 for n in nodes if n['Alive'])} alive, {sum(1 for n in nodes if not n['Alive'])} dead")
    for n in nodes:
        labels = " ".join(f"{k}={v}" for k, v in (n.get("Labels") or {}).items())
        metrics = f"  metrics http://{n['NodeManagerAddress']}:{n['MetricsExportPort']}/metrics" \
            if n.get("MetricsExportPort") and n["Alive"] else ""
        print(f"  {n['NodeID'][:12]}  {n['NodeManagerAddress']}  {'ALIVE' if n['Alive'] else 'DEAD'}"
              f"{'  (head)' if n['IsHead'] else ''}{'  ' + labels if labels else ''}{metrics}")
    print("Resources (used / total):")
    for k in sorted(total):
        if k.startswith("node:"):
            continue
        used = total[k] - avail.get(k, 0.0)
        if k in ("memory", "object_store_memory"):
            print(f"  {k}: {used / 2**30:.2f} / {total[k] / 2**30:.2f} GiB")
        else:
            print(f"  {k}: {used:g} / {total[k]:g}")
    for s in stores:
        print(f"Object store: {s['used_bytes'] / 2**20:.1f} MiB used of {s['capacity_bytes'] / 2**20:.0f} MiB, "
              f"{s['num_objects']} objects, {s['spilled_objects']} spilled")
    live = [g for g in groups if g["state"] != "REMOVED"]
    print(f"Placement groups: {len(live) or 'none'}")
    for g in live:
        where = ", ".join(f"{i}:{n[:8]}" for i, n in enumerate(g["bundle_nodes"])) or g["pending_reason"]
        print(f"  {g['placement_group_id'][:12]} {g['name'] or '-'} {g['strategy']} {g['state']}  {where}")
    print("Pending demand: " + (pending_demand_text(demand) or "none"))
    _print_runtime_env_cache(env_cache)
    return 0


def _print_runtime_env_cache(cache: dict) -> None:
    """What each node keeps for runtime_envs; entries no worker uses go after runtime_env_cache_ttl_s."""
    pkgs = cache.get("packages") or []
    print(f"Runtime env packages on the head: {len(pkgs) or 'none'}"
          + (f" ({sum(p['bytes'] for p in pkgs) / 2**20:.1f} MiB)" if pkgs else ""))
    rows = [(n["node_id"][:12], e) for n in cache.get("nodes") or [] for e in n["entries"]]
    rows += [("jobs (head)", e) for e in cache.get("jobs") or []]
    print(f"Runtime env cache: {len(rows) or 'empty'}")
    for where, e in rows:
        use = f"{e['workers']} workers" if e["workers"] else f"idle {e['idle_s']:.0f}s"
        print(f"  {where}  {e['kind']:<11} {e['uri'][:40]:<40} {e['bytes'] / 2**20:8.1f} MiB  {use}  {e['detail'][:40]}")


def pending_demand_text(demand: list[dict]) -> str:
    """Waiting resource shapes, counted: "64 pending tasks: {CPU: 1}; 1 pending task: {GPU: 1}"."""
    from collections import Counter
    shapes = Counter(json.dumps({k: v for k, v in sorted(d.items()) if "_group_" not in k}) for d in demand)
    parts = []
    for shape, n in shapes.most_common():
        text = ", ".join(f"{k}: {v:g}" for k, v in json.loads(shape).items())
        if text:
            parts.append(f"{n} pending task{'s' if n != 1 else ''}: {{{text}}}")
    return "; ".join(parts)


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo
    return run_demo(args.notebook)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="runtime", description="Orrery's distributed runtime (Ray-compatible).")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("start", help="start a cluster in the background")
    s.add_argument("--head", action="store_true", help="start the head node (control store + node manager)")
    s.add_argument("--address", help="HOST:PORT of a running head to join as one more node")
    s.add_argument("--port", type=int, default=6379, help="control store port (default 6379; 0 picks a free one)")
    s.add_argument("--num-cpus", type=float)
    s.add_argument("--num-gpus", type=float)
    s.add_argument("--resources", help='custom resources as JSON, e.g. \'{"x86": 1}\'')
    s.add_argument("--object-store-memory", type=int, help="bytes of shared memory for objects")
    s.add_argument("--object-spill-dir", help="directory for objects spilled when the store is full")
    s.add_argument("--system-config", help="JSON of system config overrides")
    s.add_argument("--storage", help="where the control store keeps its tables: sqlite (default, in the session "
                   "directory), sqlite:///ABSOLUTE/PATH, redis://HOST:PORT[/DB], or none")
    s.add_argument("--restart", action="store_true",
                   help="start the control store of the running cluster again after it died (it recovers its state)")
    s.add_argument("--autoscaling-config", help="cluster YAML: run the autoscaler on this head")
    s.add_argument("--block", action="store_true", help="stay in the foreground until stopped (containers)")
    s.add_argument("--labels", help='node labels as JSON, e.g. \'{"zone": "a"}\' (shown in status and list nodes)')
    s.add_argument("--token", help="the cluster's shared secret (default: RUNTIME_CLUSTER_TOKEN, else a new one for "
                   "a head); nodes joining from another machine need the head's")
    s.add_argument("--token-file", help="a file holding the token (a Kubernetes Secret mounted as a file): unlike "
                   "--token, it is not shown by `ps`")
    s.add_argument("--tls-cert", help="mutual TLS on every TCP link: this node's PEM certificate (as "
                   "RUNTIME_TLS_SERVER_CERT; drivers and other nodes need the same settings, see docs/security.md)")
    s.add_argument("--tls-key", help="the certificate's PEM private key (RUNTIME_TLS_SERVER_KEY)")
    s.add_argument("--tls-ca", help="the PEM certificate of the authority that signed every node's (RUNTIME_TLS_CA_CERT)")
    s.add_argument("--client-server-port", type=int, default=DEFAULT_CLIENT_PORT,
                   help=f"port for thin clients, client://HOST:PORT (default {DEFAULT_CLIENT_PORT}, or a free one if "
                   "taken; 0 picks a free one; -1 turns it off)")
    s.add_argument("--node-ip", "--node-ip-address", dest="node_ip", default="127.0.0.1",
                   help="this node's address that the other nodes reach it at (default 127.0.0.1: one machine)")
    s.add_argument("--temp-dir", help="root directory for the head's session directory (logs, token, tables); "
                   "default TMPDIR/orrery. `address='auto'` still finds the cluster")
    s.add_argument("--dashboard-host", default="127.0.0.1", help="address the dashboard binds to (default 127.0.0.1)")
    s.add_argument("--dashboard-port", type=int, default=None,
                   help="dashboard and job API port (default 8265, or the next free one if taken)")
    s.add_argument("--include-dashboard", type=_bool_arg, default=True, metavar="BOOL",
                   help="false: no dashboard on this head (default true)")
    s.add_argument("--metrics-export-port", type=int, help="port of the Prometheus metrics endpoint")
    s.add_argument("--isolate-namespaces", action="store_true",
                   help="named actors and placement groups are reachable only from jobs of their own namespace "
                        "(get_actor across namespaces is refused); not a security boundary (docs/security.md)")
    s.add_argument("--disable-usage-stats", action="store_true",
                   help="accepted as Ray's; no effect (nothing is ever collected or sent)")
    s.set_defaults(fn=_cmd_start)
    up = sub.add_parser("up", help="start a cluster from a cluster YAML, with the autoscaler")
    up.add_argument("config")
    up.add_argument("--port", type=int, default=6379, help="control store port (default 6379; 0 picks a free one)")
    up.set_defaults(fn=_cmd_up)
    down = sub.add_parser("down", help="stop the cluster started by `runtime up`")
    down.add_argument("config")
    down.set_defaults(fn=_cmd_down)
    sub.add_parser("stop", help="stop the cluster started by `runtime start`").set_defaults(fn=_cmd_stop)
    sub.add_parser("status", help="nodes, resources and object-store use").set_defaults(fn=_cmd_status)
    from .state import add_parsers as add_state_parsers
    add_state_parsers(sub)  # list, get, summary, logs, memory, timeline
    d = sub.add_parser("demo", help="a short tour on an embedded cluster")
    d.add_argument("--notebook", help="then run this notebook as a batch job on the same cluster")
    d.set_defaults(fn=_cmd_demo)
    from .job import add_parser as add_job_parser
    add_job_parser(sub)
    return p


def main(argv: list[str] | None = None) -> None:
    from .._core import api_state
    api_state.driver_kind = "cli"  # the drivers this command joins as are listed as CLI calls
    args = build_parser().parse_args(argv)
    try:
        code = args.fn(args)
    except BrokenPipeError:
        # `runtime list tasks | head`: the reader has what it wanted. Point stdout at /dev/null
        # so that the interpreter's own flush at exit does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 0
    except (ConnectionError, ValueError) as e:  # said for the user already: no traceback
        print(f"runtime {args.command}: {e}", file=sys.stderr)
        code = 1
    sys.exit(code)
