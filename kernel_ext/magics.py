"""The magics: `%cluster`, `%%remote` / `%remote`, `%remote_config`."""

from __future__ import annotations

import gc
import os
import sys
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring

import runtime
from runtime._core import launcher

from . import cluster_text
from .cellcode import parse_size
from .remote_magic import RemoteCell, run_async


def _remote_arguments(func: Any) -> Any:
    """The options shared by %%remote and %remote_config."""
    for arg in reversed([
        argument("--num-cpus", type=float, default=None, help="CPUs the cell's task holds (default 1)."),
        argument("--num-gpus", type=float, default=None, help="GPUs the cell's task holds."),
        argument("--memory", default=None, help="Memory the task reserves, like 2GiB."),
        argument("--resources", default=None, help='Custom resources as JSON, like \'{"x86": 1}\'.'),
        argument("--env", default=None, help='Environment variables for the task as JSON.'),
        argument("--pip", default=None, help="Packages the task needs, installed once per node: PKG[,PKG...]."),
        argument("--working-dir", default=None, help="A local directory shipped to the task and made its cwd."),
        argument("--name", default=None, help="Label of the task (default: cell In[n])."),
        argument("--retries", type=int, default=None, help="Retries if the worker dies."),
        argument("--timeout", type=float, default=None, help="Cancel the cell after this many seconds."),
        argument("--max-bytes", default=None,
                 help="Values larger than this stay in the cluster as ObjectRefs (default 100MiB)."),
    ]):
        func = arg(func)
    return func


@magics_class
class ClusterMagics(Magics):
    def __init__(self, shell: Any) -> None:
        super().__init__(shell)
        self.defaults: dict[str, Any] = {}

    # -- %cluster -------------------------------------------------------------------------
    @magic_arguments()
    @argument("action", nargs="?", default="",
              help="start | connect | attach | status | list | stop | gc (nothing: the cluster view)")
    @argument("target", nargs="?", default=None, help="address for connect (auto, HOST:PORT)")
    @argument("--num-cpus", type=float, default=None)
    @argument("--num-gpus", type=float, default=None)
    @argument("--object-store-memory", default=None)
    @argument("--nodes", type=int, default=None)
    @argument("--name", default=None)
    @argument("--detach", action="store_true")
    @line_magic
    def cluster(self, line: str) -> Any:
        """Start, join, inspect or stop the cluster this notebook uses."""
        args = parse_argstring(self.cluster, line)
        action = args.action or "view"
        handler = getattr(self, f"_cluster_{action}", None)
        if handler is None:
            raise UsageError(f"Unknown %cluster action {action!r}. Use one of: start, connect, attach, status, "
                             "list, stop, gc (or no action for the cluster view).")
        return handler(args)

    def _cluster_start(self, args: Any) -> Any:
        if runtime.is_initialized():
            raise UsageError("This notebook is already connected to a cluster. Run `%cluster stop` first.")
        nodes = 1 if args.nodes is None else args.nodes
        if nodes < 1:
            raise UsageError(f"--nodes must be at least 1, got {nodes}.")
        try:
            store = parse_size(args.object_store_memory) if args.object_store_memory else None
        except ValueError as e:
            raise UsageError(f"--object-store-memory: {e}") from None
        if nodes > 1:
            # K node managers share this machine: each gets its share unless told otherwise.
            from runtime._core import launcher, machine
            if args.num_cpus is None:
                args.num_cpus = max(1.0, machine.cpu_limit() / nodes)
            if store is None:
                store = launcher.default_resources(None, 0, None)["object_store_memory"] // nodes
        if args.detach:
            cmd = [sys.executable, "-m", "runtime", "start", "--head"]
            if args.num_cpus is not None:
                cmd += ["--num-cpus", str(args.num_cpus)]
            if args.num_gpus is not None:
                cmd += ["--num-gpus", str(args.num_gpus)]
            if store is not None:
                cmd += ["--object-store-memory", str(store)]
            import subprocess
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
            if done.returncode != 0:
                raise UsageError(f"`runtime start --head` failed: {done.stderr.strip() or done.stdout.strip()}")
            ctx = runtime.init(address="auto")
            join = [sys.executable, "-m", "runtime", "start", "--address", ctx.address_info["address"]] + cmd[5:]
            for _ in range(nodes - 1):
                done = subprocess.run(join, capture_output=True, text=True, timeout=120)
                if done.returncode != 0:
                    raise UsageError(f"`runtime start --address` failed: {done.stderr.strip() or done.stdout.strip()}")
        else:
            ctx = runtime.init(num_cpus=args.num_cpus, num_gpus=args.num_gpus, object_store_memory=store)
            if nodes > 1:
                from runtime._core.api import add_local_nodes
                add_local_nodes(nodes - 1, num_cpus=args.num_cpus, object_store_memory=store)
        print(cluster_text.summary())
        return ctx

    def _cluster_connect(self, args: Any) -> Any:
        if runtime.is_initialized():
            raise UsageError("This notebook is already connected to a cluster. Run `%cluster stop` first.")
        address = args.target or os.environ.get("RUNTIME_ADDRESS") or "auto"
        try:
            ctx = runtime.init(address=address)
        except (ConnectionError, ValueError) as e:
            raise UsageError(f"Could not connect to {address!r}: {e}") from None
        print(cluster_text.summary())
        return ctx

    def _cluster_attach(self, args: Any) -> Any:
        """After a kernel restart: join the running cluster and re-bind what a session sent back."""
        if not args.target:
            raise UsageError("%cluster attach NAME needs the session's name, like: %cluster attach etl")
        if not runtime.is_initialized():
            address = os.environ.get("RUNTIME_ADDRESS") or "auto"
            try:
                runtime.init(address=address)
            except ConnectionError as e:
                raise UsageError(f"%cluster attach: no running cluster to attach to ({e}). Sessions outlive the "
                                 "kernel only on a cluster that does: `runtime start --head` or "
                                 "`%cluster start --detach`.") from None
        from . import sessions
        from .remote_magic import _UNSET, DEFAULT_MAX_BYTES, unship
        actor = sessions.find(args.target)
        info = runtime.get(actor.info.remote())
        values = runtime.get(actor.pulled_values.remote(DEFAULT_MAX_BYTES))
        rebound = []
        for name, shipped in values.items():
            value = unship(name, shipped, DEFAULT_MAX_BYTES)
            if value is not _UNSET:
                self.shell.user_ns[name] = value
                rebound.append(name)
        print(f"Attached to session {args.target!r} ({info['cells']} cell(s) ran in it): "
              + (f"re-bound {', '.join(rebound)}." if rebound else "no names to re-bind.")
              + f" Run cells in it with %%remote --session {args.target}.")
        return None

    def _cluster_status(self, args: Any) -> None:
        ensure_cluster()
        print(cluster_text.summary())

    def _cluster_view(self, args: Any) -> None:
        ensure_cluster()
        from .widgets import show_cluster
        show_cluster(self.shell.user_ns)

    def _cluster_list(self, args: Any) -> None:
        """Clusters running on this machine (this notebook's marked *), and its sessions."""
        head = launcher.read_current_cluster()
        here = runtime.get_runtime_context().gcs_address if runtime.is_initialized() else None
        rows = []
        for info in launcher.live_clusters():
            kind = "runtime start --head" if head and info["gcs_address"] == head["gcs_address"] else "embedded"
            mark = "*" if info["gcs_address"] == here else " "
            rows.append(f"{mark} {info['gcs_address'].removeprefix('tcp:')}  {kind}  (session {info['session_dir']})")
        if runtime.is_initialized():
            from . import sessions
            names = sessions.list_names()
            if names:
                rows.append("Sessions in this notebook's cluster: " + ", ".join(names))
        print("\n".join(rows) if rows else "No clusters: run %cluster start, or `runtime start --head` in a shell.")

    def _cluster_stop(self, args: Any) -> None:
        if not runtime.is_initialized():
            print("Not connected to a cluster.")
            return
        owned = _owns_cluster()
        runtime.shutdown()
        print("Stopped the cluster this notebook started." if owned
              else "Disconnected (the cluster keeps running; `runtime stop` stops it).")

    def _cluster_gc(self, args: Any) -> None:
        """Release objects pinned only by the notebook's output history (Out[n], _, __, ___)."""
        out = self.shell.user_ns.get("Out", {})
        dropped = [n for n, v in list(out.items()) if _holds_refs(v)]
        for n in dropped:
            del out[n]
            self.shell.user_ns.pop(f"_{n}", None)
        for name in ("_", "__", "___"):
            if _holds_refs(self.shell.user_ns.get(name)):
                self.shell.user_ns[name] = ""
        if hasattr(self.shell, "displayhook"):
            for attr in ("_", "__", "___"):
                if _holds_refs(getattr(self.shell.displayhook, attr, None)):
                    setattr(self.shell.displayhook, attr, "")
        gc.collect()
        print(f"Released {len(dropped)} output-history entr{'y' if len(dropped) == 1 else 'ies'} holding cluster objects.")

    # -- %%remote --------------------------------------------------------------------------
    @magic_arguments()
    @_remote_arguments
    @argument("-i", default=None, help="Names to send (default: every notebook name the cell reads).")
    @argument("-o", default=None, help="Names to bring back (default: every name the cell assigns).")
    @argument("--no-pull", action="store_true", help="Bring no names back.")
    @argument("--async", dest="is_async", action="store_true", help="Return at once with an awaitable ObjectRef.")
    @argument("--as", dest="as_name", default=None, help="Name to bind the --async ObjectRef to.")
    @argument("--session", default=None, help="Run in a persistent session namespace (created on first use).")
    @argument("--spread", type=int, default=None, help="Run on N workers; the value and names come back as lists.")
    @argument("--pg", default=None, help="Run in placement group NAME (any bundle) or NAME:BUNDLE.")
    @line_cell_magic
    def remote(self, line: str, cell: str | None = None) -> Any:
        """Run this cell (or, as %remote EXPR, one expression) as a task in the cluster."""
        if cell is None:  # %remote EXPR: the options end where the expression starts
            opts, expr = _split_line_magic(line)
            args = parse_argstring(self.remote, opts)
            source, first_line = expr, 1
            if not source.strip():
                raise UsageError("%remote needs an expression, like: %remote sum(range(10))")
        else:
            args = parse_argstring(self.remote, line)
            source, first_line = cell, 2  # the cell's first line is the %%remote line
        if args.spread is not None and (args.spread < 1 or args.session or args.is_async):
            raise UsageError("--spread N takes N >= 1 and cannot be combined with --session or --async.")
        if args.session is not None and not args.session.strip():
            raise UsageError("--session takes a name, like --session etl.")
        if args.as_name and not args.is_async:
            raise UsageError("--as NAME names the handle of an --async cell; add --async.")
        if args.as_name and not args.as_name.isidentifier():
            raise UsageError(f"--as takes a Python name, not {args.as_name!r}.")
        ensure_cluster()
        run = RemoteCell(self.shell, args, source, self.defaults, first_line)
        if args.is_async:
            ref = run_async(run, args.as_name)
            return None if args.as_name else ref
        if args.spread is not None:
            return run.run_spread(args.spread)
        return run.run_blocking()

    @magic_arguments()
    @_remote_arguments
    @argument("--reset", action="store_true", help="Forget all defaults.")
    @line_magic
    def remote_config(self, line: str) -> None:
        """Set defaults for later %%remote cells, like: %remote_config --num-cpus 2 --max-bytes 1GiB"""
        args = parse_argstring(self.remote_config, line)
        if args.reset:
            self.defaults.clear()
        for key, value in vars(args).items():
            if key != "reset" and value is not None:
                if key == "max_bytes":
                    parse_size(value)  # fail now, not at the next cell
                self.defaults[key] = value
        print("%remote defaults: " + (", ".join(f"{k.replace('_', '-')}={v}" for k, v in sorted(self.defaults.items()))
                                      or "none"))


def _split_line_magic(line: str) -> tuple[str, str]:
    """'--num-cpus 2 sum(x)' -> ('--num-cpus 2', 'sum(x)'): options are the leading -x [value] words."""
    words = line.split(" ")
    opts: list[str] = []
    i = 0
    flags_without_value = {"--no-pull", "--async"}
    while i < len(words) and words[i].startswith("-"):
        opts.append(words[i])
        if words[i] not in flags_without_value and "=" not in words[i] and i + 1 < len(words):
            opts.append(words[i + 1])
            i += 1
        i += 1
    return " ".join(opts), " ".join(words[i:])


def _owns_cluster() -> bool:
    """True if this kernel started the (embedded) cluster it is connected to."""
    from runtime._core import api_state
    return api_state.cluster is not None


def _holds_refs(value: Any) -> bool:
    from runtime import ObjectRef
    if isinstance(value, ObjectRef):
        return True
    if isinstance(value, (list, tuple, set)):
        return any(isinstance(v, ObjectRef) for v in value)
    if isinstance(value, dict):
        return any(isinstance(v, ObjectRef) for v in value.values())
    return False


def ensure_cluster() -> None:
    """Nothing starts at %load_ext; the first magic that needs a cluster joins or starts one:
    RUNTIME_ADDRESS, else a cluster started on this machine, else an embedded one sized to
    the machine (cgroup CPU and memory limits, /dev/shm)."""
    if runtime.is_initialized():
        return
    address = os.environ.get("RUNTIME_ADDRESS")
    if address:
        try:
            runtime.init(address=address)
        except ConnectionError as e:
            raise UsageError(f"RUNTIME_ADDRESS={address!r}: {e}") from None
    elif launcher.read_current_cluster() is not None:
        runtime.init(address="auto")
    else:
        runtime.init()
