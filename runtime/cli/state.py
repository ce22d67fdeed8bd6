"""The state CLI, as Ray's: `runtime list|get|summary|logs|memory|timeline`.

`--address` is the cluster (`auto`, HOST:PORT of its control store; RUNTIME_ADDRESS or
RAY_ADDRESS) or its dashboard (`http://HOST:8265`, as Ray's state CLI takes). The rows are Ray's
schema (runtime/_core/ray_state.py) either way: asked of the control store directly with the
cluster's token (the command does not join as a driver, so it is not itself in `list jobs`),
or of the dashboard's `/api/v0`.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import sys
import time
import urllib.parse
from typing import Any

from .._core import ray_state

# CLI names of the resources (Ray's, with a dash) -> the API's.
RESOURCES = {"actors": "actors", "jobs": "jobs", "nodes": "nodes", "placement-groups": "placement_groups",
             "workers": "workers", "tasks": "tasks", "objects": "objects"}
ID_COLUMN = {"actors": "actor_id", "jobs": "submission_id", "nodes": "node_id",
             "placement_groups": "placement_group_id", "workers": "worker_id", "tasks": "task_id",
             "objects": "object_id"}


class StateError(Exception):
    """Something the user can fix: printed without a traceback."""


# -- where the state comes from ------------------------------------------------------------------
class _ControlStoreSource:
    def __init__(self, address: str) -> None:
        from .._core.session import find_cluster
        try:
            info = find_cluster(address)
        except ConnectionError as e:
            raise StateError(str(e)) from None
        self.store = ray_state.ControlStoreClient(info["gcs_address"], info["token"], kind="cli")

    def _run(self, coro: Any) -> Any:
        try:
            return asyncio.run(coro)
        except (ConnectionError, OSError) as e:
            raise StateError(f"The cluster's control store did not answer ({e}); is the cluster running?") from None

    def list(self, resource: str, filters: list, limit: int, detail: bool) -> dict:
        return self._run(ray_state.list_state(resource, self.store.call, filters, limit, detail))

    def summary(self, resource: str) -> dict:
        return self._run(ray_state.summarize(resource, self.store.call))["result"]["node_id_to_summary"]

    def task_rows(self) -> list[dict]:
        return self._run(ray_state.our_rows("tasks", self.store.call))

    def log_files(self, node_id: str | None, glob: str) -> dict:
        reply, _ = self._run(self.store.call({"op": "list_logs", "node_id": node_id, "glob": glob}))
        return reply["nodes"]

    def read_log(self, node_id: str | None, filename: str | None, lines: int | None, offset: int | None = None,
                 **find: Any) -> dict:
        async def read() -> dict:
            nonlocal node_id, filename
            task_id = None
            if not filename:
                found = await ray_state.find_log(self.store.call, **find)
                node_id, filename, task_id = found["node_id"], found["filename"], found["task_id"]
            return {**await ray_state.read_log(self.store.call, node_id, filename, lines, offset, task_id),
                    "node_id": node_id, "filename": filename}
        return self._run(read())


class _DashboardSource:
    """The same questions over the dashboard's HTTP API (Ray's state API paths)."""

    def __init__(self, url: str) -> None:
        from ..jobs.client import HttpJobs
        from .._core.launcher import dashboard_token
        # The dashboard may ask for it (beyond loopback, or RUNTIME_DASHBOARD_AUTH=1).
        token = os.environ.get("RUNTIME_CLUSTER_TOKEN") or dashboard_token(url)
        self.url = url.rstrip("/")
        self.http = HttpJobs(self.url, {"Authorization": f"Bearer {token}"} if token else {}, {})

    def _get(self, path: str, params: list | dict | None = None, raw: bool = False) -> Any:
        query = "?" + urllib.parse.urlencode(params or {}, doseq=True) if params else ""
        try:
            answer = self.http.request("GET", path + query, raw=raw)
        except (RuntimeError, ConnectionError) as e:
            raise StateError(str(e)) from None
        except ValueError as e:  # a 400/404: what was asked is wrong or not there
            raise (FileNotFoundError if "HTTP 404" in str(e) else ValueError)(str(e)) from None
        return answer if raw else answer["data"]["result"]

    def list(self, resource: str, filters: list, limit: int, detail: bool) -> dict:
        params = [("limit", limit), ("detail", str(detail).lower())]
        for k, p, v in filters:
            params += [("filter_keys", k), ("filter_predicates", p), ("filter_values", v)]
        return self._get(f"/api/v0/{resource}", params)

    def summary(self, resource: str) -> dict:
        return self._get(f"/api/v0/{resource}/summarize")["node_id_to_summary"]

    def task_rows(self) -> list[dict]:
        raise StateError("`runtime timeline` reads the control store: give the cluster's address, not the "
                         "dashboard's (or open <dashboard>/api/v0/tasks/timeline).")

    def log_files(self, node_id: str | None, glob: str) -> dict:
        nodes = [node_id] if node_id else [n["node_id"] for n in self.list("nodes", [("state", "=", "ALIVE")],
                                                                            ray_state.MAX_LIMIT, False)["result"]]
        return {n: self._get("/api/v0/logs", {"node_id": n, "glob": glob}) for n in nodes}

    def read_log(self, node_id: str | None, filename: str | None, lines: int | None, offset: int | None = None,
                 **find: Any) -> dict:
        if offset is not None:
            raise StateError("--follow reads the control store: give the cluster's address, not the dashboard's.")
        params = {k: v for k, v in {"node_id": node_id, "filename": filename, "lines": lines, **find}.items()
                  if v is not None}
        return {"text": self._get("/api/v0/logs/file", params, raw=True), "offset": None}


def source(address: str | None) -> Any:
    address = address or os.environ.get("RUNTIME_ADDRESS") or os.environ.get("RAY_ADDRESS") or "auto"
    if address.startswith(("http://", "https://")):
        return _DashboardSource(address)
    return _ControlStoreSource(address)


# -- printing ------------------------------------------------------------------------------------
def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        return json.dumps(value, default=str)
    return str(value)


def table(rows: list[dict]) -> str:
    if not rows:
        return "(none)"
    columns = list(rows[0])
    cells = [[_cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(min(len(row[i]), 60) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths)).rstrip()]
    for row in cells:
        lines.append("  ".join((v if len(v) <= 60 else v[:57] + "...").ljust(w) for v, w in zip(row, widths)).rstrip())
    return "\n".join(lines)


def emit(rows: list[dict], fmt: str, title: str, stats: dict | None = None) -> None:
    if fmt == "json":
        print(json.dumps(rows, indent=2, default=str))
    elif fmt == "yaml":
        import yaml
        print(yaml.safe_dump(json.loads(json.dumps(rows, default=str)), sort_keys=False).rstrip())
    elif fmt == "table":
        print(table(rows))
    else:  # Ray's default: a heading, the stats, the table
        print(f"======== {title}: {datetime.datetime.now()} ========")
        print("Stats:\n" + "-" * 30)
        for k, v in (stats or {"Total": len(rows)}).items():
            print(f"{k}: {v}")
        print("\nTable:\n" + "-" * 30)
        print(table(rows))


def parse_filters(texts: list[str] | None) -> list[tuple[str, str, str]]:
    out = []
    for text in texts or ():
        for predicate in ("!=", "="):
            if predicate in text:
                key, value = text.split(predicate, 1)
                out.append((key.strip(), predicate, value.strip()))
                break
        else:
            raise StateError(f"A filter is key=value or key!=value, like --filter state=RUNNING; got {text!r}.")
    return out


# -- commands --------------------------------------------------------------------------------------
def _cmd_list(args: argparse.Namespace) -> int:
    resource = RESOURCES[args.resource]
    answer = source(args.address).list(resource, parse_filters(args.filter), args.limit, args.detail)
    rows = answer["result"]
    emit(rows, args.format, "List", {"Total": answer["num_filtered"]})
    if answer["num_filtered"] > len(rows):
        print(f"\n(showing {len(rows)} of {answer['num_filtered']}; raise --limit to see more)", file=sys.stderr)
    return 0


def _cmd_get(args: argparse.Namespace) -> int:
    resource = RESOURCES[args.resource]
    answer = source(args.address).list(resource, [(ID_COLUMN[resource], "=", args.id)], ray_state.MAX_LIMIT, True)
    if not answer["result"]:
        print(f"Resource with id={args.id} not found in the cluster.", file=sys.stderr)
        return 1
    emit(answer["result"], "yaml" if args.format == "default" else args.format, "Get")
    return 0


def _cmd_summary(args: argparse.Namespace) -> int:
    summary = source(args.address).summary(args.resource)["cluster"]
    if args.format in ("json", "yaml"):
        emit([summary], args.format, "Summary")
        return 0
    print(f"======== {args.resource.capitalize()} Summary: {datetime.datetime.now()} ========")
    print("Stats:\n" + "-" * 30)
    for k, v in summary.items():
        if k not in ("summary", "summary_by"):
            print(f"{k}: {v}")
    print(f"\nTable (group by {summary['summary_by']}):\n" + "-" * 30)
    rows = [{**({} if k in g.values() else {"key": k}),
             **{c: (", ".join(f"{s}: {n}" for s, n in v.items()) if isinstance(v, dict) else v) for c, v in g.items()}}
            for k, g in summary["summary"].items()]
    print(table(rows))
    return 0


def _cmd_timeline(args: argparse.Namespace) -> int:
    rows = source(args.address).task_rows()
    events = ray_state.timeline([t for t in rows if not args.job_id or t.get("job_id") == args.job_id])
    path = args.output or f"timeline-{time.strftime('%Y%m%d-%H%M%S')}.json"
    with open(path, "w") as f:
        json.dump(events, f)
    print(f"Wrote {sum(1 for e in events if e['ph'] == 'X')} task executions to {path}; open it in "
          "https://ui.perfetto.dev or chrome://tracing.")
    return 0


def _cmd_logs(args: argparse.Namespace) -> int:
    src = source(args.address)
    target, name = args.target, args.name
    lines = None if args.tail < 0 else args.tail
    find: dict[str, Any] = {}
    if target in ("actor", "task", "worker"):
        ident = args.id or name
        if not ident and not args.pid:
            raise StateError(f"`runtime logs {target}` needs --id ID" + (" or --pid PID" if target == "worker" else "")
                             + ".")
        find = {"actor": {"actor_id": ident}, "task": {"task_id": ident},
                "worker": {"worker_id": ident} if ident else {"pid": args.pid}}[target]
        find["suffix"] = "err" if args.err else "out"
        filename = None
    elif target in (None, "cluster") or (target and any(ch in target for ch in "*?[")):
        glob = name if target == "cluster" and name else target if target not in (None, "cluster") else "*"
        for node_id, groups in src.log_files(args.node_id, glob).items():
            print(f"Node {node_id}:")
            for group, files in sorted(groups.items()):
                print(f"  {group}:")
                for f in files:
                    print(f"    {f}")
        return 0
    else:
        filename = target
    if args.follow:
        log = src.read_log(args.node_id, filename, lines, **find)
        sys.stdout.write(log["text"])
        sys.stdout.flush()
        offset = log["offset"]
        node_id, filename = log.get("node_id") or args.node_id, log.get("filename") or filename
        try:
            while True:  # until interrupted, as `tail -f`
                time.sleep(0.5)  # polling the file for new lines, not synchronising
                more = src.read_log(node_id, filename, None, offset)
                sys.stdout.write(more["text"])
                sys.stdout.flush()
                offset = more["offset"]
        except KeyboardInterrupt:
            return 0
    sys.stdout.write(src.read_log(args.node_id, filename, lines, **find)["text"])
    return 0


def _cmd_memory(args: argparse.Namespace) -> int:
    rows = source(args.address).list("objects", [], ray_state.MAX_LIMIT, True)["result"]
    unit = {"B": 1, "KB": 2**10, "MB": 2**20, "GB": 2**30}[args.units]
    key = "ip" if args.group_by == "NODE_ADDRESS" else "call_site"
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r[key], []).append(r)
    order = (lambda r: -(r["object_size"] or 0)) if args.sort_by == "OBJECT_SIZE" else \
        (lambda r: (r["reference_type"], -(r["object_size"] or 0)))
    print(f"======== Object references status: {datetime.datetime.now()} ========")
    print(f"Grouping by {args.group_by.lower().replace('_', ' ')}...  Sorting by {args.sort_by.lower().replace('_', ' ')}..."
          f"  Display {args.num_entries or 'all'} entries per group...\n")
    if args.group_by == "STACK_TRACE" and rows and all(r["call_site"] == "disabled" for r in rows):
        print("Call sites are not recorded: run the driver (or start the cluster) with "
              "RAY_record_ref_creation_sites=1 (or RUNTIME_RECORD_REF_CREATION_SITES=1) to group by them.\n")
    for name, members in sorted(groups.items(), key=lambda kv: -sum(r["object_size"] or 0 for r in kv[1])):
        kinds: dict[str, int] = {}
        for r in members:
            kinds[r["reference_type"]] = kinds.get(r["reference_type"], 0) + 1
        total = sum(r["object_size"] or 0 for r in members)
        label = "node address" if key == "ip" else "call site"
        print(f"--- Summary for {label}: {name} ---")
        print(f"Mem Used by Objects: {total / unit:,.2f} {args.units}   Objects: {len(members)}   "
              + "   ".join(f"{k}: {n}" for k, n in sorted(kinds.items())))
        if not args.stats_only:
            print(f"--- Object references for {label}: {name} ---")
            shown = sorted(members, key=order)[:args.num_entries or None]
            print(table([{"ip_address": r["ip"], "pid": r["pid"], "type": r["type"], "call_site": r["call_site"],
                          "status": r["task_status"], "size": f"{(r['object_size'] or 0) / unit:,.2f} {args.units}",
                          "reference_type": r["reference_type"], "object_ref": r["object_id"]} for r in shown]))
        print()
    if not any(r["call_site"] != "disabled" for r in rows):
        print("To record the call site of each object, set RAY_record_ref_creation_sites=1.")
    print(f"{len(rows)} objects, {sum(r['object_size'] or 0 for r in rows) / unit:,.2f} {args.units} in all.")
    return 0


def _guarded(fn: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except (StateError, FileNotFoundError) as e:
            print(e, file=sys.stderr)
            return 1
        except ValueError as e:  # a filter or limit the state API refused: it says why
            print(e, file=sys.stderr)
            return 2
    return run


def add_parsers(sub: Any) -> None:
    def common(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--address", help="the cluster (auto, HOST:PORT) or its dashboard (http://HOST:8265)")
        return p

    formats = ["default", "table", "json", "yaml"]
    ls = common(sub.add_parser("list", help="list actors, tasks, objects, nodes, workers, jobs, placement groups"))
    ls.add_argument("resource", choices=list(RESOURCES))
    ls.add_argument("--filter", "-f", action="append", help="key=value or key!=value (repeatable)")
    ls.add_argument("--limit", type=int, default=ray_state.DEFAULT_LIMIT, help="at most this many rows (100)")
    ls.add_argument("--detail", action="store_true", help="every column, as Ray's --detail")
    ls.add_argument("--format", choices=formats, default="default")
    ls.set_defaults(fn=_guarded(_cmd_list))

    get = common(sub.add_parser("get", help="one actor, task, object, node, worker, job or placement group by id"))
    get.add_argument("resource", choices=list(RESOURCES))
    get.add_argument("id")
    get.add_argument("--format", choices=formats, default="default")
    get.set_defaults(fn=_guarded(_cmd_get))

    summary = common(sub.add_parser("summary", help="counts of tasks, actors or objects"))
    summary.add_argument("resource", choices=["tasks", "actors", "objects"])
    summary.add_argument("--format", choices=formats, default="default")
    summary.set_defaults(fn=_guarded(_cmd_summary))

    logs = common(sub.add_parser("logs", help="list log files, or print one (of a file, actor, task or worker)"))
    logs.add_argument("target", nargs="?", help="cluster | actor | task | worker | a file name or glob")
    logs.add_argument("name", nargs="?", help="with cluster: a glob; with actor/task/worker: the id")
    logs.add_argument("--id", help="actor, task or worker id")
    logs.add_argument("--pid", type=int, help="worker process id (with `worker`)")
    logs.add_argument("--node-id", help="the node whose file it is (default: the head's)")
    logs.add_argument("--tail", type=int, default=1000, help="last lines (1000; -1: all)")
    logs.add_argument("--follow", "-f", action="store_true", help="keep printing new lines")
    logs.add_argument("--err", action="store_true", help="stderr (.err) instead of stdout")
    logs.set_defaults(fn=_guarded(_cmd_logs))

    mem = common(sub.add_parser("memory", help="objects and their references, as `ray memory`"))
    mem.add_argument("--group-by", choices=["NODE_ADDRESS", "STACK_TRACE"], default="NODE_ADDRESS")
    mem.add_argument("--sort-by", choices=["OBJECT_SIZE", "REFERENCE_TYPE"], default="OBJECT_SIZE")
    mem.add_argument("--units", choices=["B", "KB", "MB", "GB"], default="B")
    mem.add_argument("--num-entries", type=int, help="rows per group")
    mem.add_argument("--stats-only", action="store_true")
    mem.set_defaults(fn=_guarded(_cmd_memory))

    tl = common(sub.add_parser("timeline", help="a Chrome trace of task execution (Perfetto)"))
    tl.add_argument("--job-id")
    tl.add_argument("--output", "-o", help="file to write (timeline-<time>.json)")
    tl.set_defaults(fn=_guarded(_cmd_timeline))
