"""What the cluster widget shows: a snapshot read from the public state API, and its HTML and
plain-text renderings (the text form is what batch runs and terminals get).

Kept apart from the ipywidgets code so that it can be read, and tested, without a frontend.
"""

from __future__ import annotations

import collections
import html
import time
from dataclasses import dataclass, field
from typing import Any

from runtime.util import state

from .cell_tags import describe as describe_cell
from .cellcode import format_size

TABS = ("Nodes", "Tasks", "Actors", "Placement groups", "Object store", "Jobs")
TASK_STATES = ("PENDING", "RUNNING", "FINISHED", "FAILED", "CANCELLED")
ALL_CELLS = "all cells"


@dataclass
class Snapshot:
    nodes: list[dict]
    tasks: list[dict]
    actors: list[dict]
    placement_groups: list[dict]
    objects: list[dict]
    jobs: list[dict]
    pins: dict[str, list[str]] = field(default_factory=dict)  # object id -> notebook names holding it
    taken_at: float = field(default_factory=time.time)

    def cells(self) -> list[str]:
        """Cells that submitted tasks or created actors, oldest first, as `In[n]`."""
        seen: dict[str, None] = {}
        for row in self.tasks + self.actors:
            if row.get("cell"):
                seen[describe_cell(row["cell"])] = None
        return list(seen)


def collect(user_ns: dict | None = None) -> Snapshot:
    objects = state.list_objects()
    return Snapshot(nodes=state.node_stats(), tasks=state.list_tasks(), actors=state.list_actors(),
                    placement_groups=state.list_placement_groups(), objects=objects, jobs=state.list_jobs(),
                    pins=notebook_pins(user_ns or {}, {o["object_id"] for o in objects}))


def notebook_pins(user_ns: dict, object_ids: set[str]) -> dict[str, list[str]]:
    """Which notebook names hold refs to which objects: variables, and `Out[n]` history that keeps
    objects alive after the variable is gone (`%cluster gc` releases those)."""
    from runtime import ObjectRef

    pins: dict[str, list[str]] = collections.defaultdict(list)

    def note(value: Any, label: str) -> None:
        values = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else [value]
        for v in values:
            if isinstance(v, ObjectRef) and v.hex() in object_ids:
                pins[v.hex()].append(label)

    for n, value in dict(user_ns.get("Out", {})).items():
        note(value, f"Out[{n}]")
    for name, value in list(user_ns.items()):
        if not name.startswith("_") and name not in ("Out", "In"):
            note(value, name)
    return dict(pins)


# -- text ------------------------------------------------------------------------------------
def text_lines(snap: Snapshot) -> list[str]:
    """One line per tab, then recent failures: the widget's non-interactive form."""
    lines = []
    for n in snap.nodes:
        total, free = n["resources_total"], n["resources_available"]
        store = n["object_store"]
        lines.append(f"Node {n['node_id'][:8]}{' (head)' if n.get('is_head_node') else ''}: "
                     f"CPU {total.get('CPU', 0) - free.get('CPU', 0):g}/{total.get('CPU', 0):g}"
                     + (f", GPU {total.get('GPU', 0) - free.get('GPU', 0):g}/{total['GPU']:g}" if total.get("GPU") else "")
                     + f", object store {format_size(store['used_bytes'])}/{format_size(store['capacity_bytes'])}"
                     + f", {n['num_workers']} worker(s)")
    counts = collections.Counter(t["state"] for t in snap.tasks)
    lines.append("Tasks: " + (", ".join(f"{counts[s]} {s.lower()}" for s in TASK_STATES if counts[s]) or "none"))
    actor_counts = collections.Counter(a["state"] for a in snap.actors)
    lines.append("Actors: " + (", ".join(f"{v} {k.lower()}" for k, v in sorted(actor_counts.items())) or "none"))
    lines.append(f"Placement groups: {len(snap.placement_groups) or 'none'}")
    lines.append(f"Objects: {len(snap.objects)}, {format_size(sum(o['size_bytes'] for o in snap.objects))}")
    jobs, hidden = shown_jobs(snap.jobs)
    running_jobs = sum(1 for j in jobs if j.get("status") == "RUNNING")
    lines.append(f"Jobs: {len(jobs)} ({running_jobs} running)" + (f"; {hidden} other drivers not shown" if hidden else ""))
    for t in recent_failures(snap.tasks):
        lines.append(f"  failed: {t['name']} {describe_cell(t.get('cell'))} {t['error_type']}: {t['error_message']}")
    return lines


def recent_failures(tasks: list[dict], n: int = 5) -> list[dict]:
    failed = [t for t in tasks if t["state"] == "FAILED"]
    return sorted(failed, key=lambda t: t.get("end_time") or 0)[-n:]


# -- HTML ------------------------------------------------------------------------------------
def _e(value: Any) -> str:
    return html.escape(str(value))


def _bar(used: float, total: float, label: str) -> str:
    pct = 0 if not total else max(0.0, min(100.0, 100.0 * used / total))
    return (f'<div title="{_e(label)}" style="display:inline-block;width:120px;height:10px;'
            f'background:#e0e0e0;vertical-align:middle"><div style="width:{pct:.0f}%;height:10px;'
            f'background:#4a90d9"></div></div> <small>{_e(label)}</small>')


def _table(headers: list[str], rows: list[list[str]], empty: str) -> str:
    if not rows:
        return f"<p><i>{_e(empty)}</i></p>"
    head = "".join(f"<th style='text-align:left;padding:2px 8px'>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td style='padding:2px 8px'>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def nodes_html(snap: Snapshot) -> str:
    rows = []
    for n in snap.nodes:
        total, free = n["resources_total"], n["resources_available"]
        store = n["object_store"]
        cpu = total.get("CPU", 0)
        gpu = total.get("GPU", 0)
        mem_used, mem_total = n.get("memory_used_bytes") or 0, n.get("memory_total_bytes") or 0
        rows.append([
            f"<code>{_e(n['node_id'][:8])}</code>" + (" (head)" if n.get("is_head_node") else ""),
            _e(n.get("state", "ALIVE")),
            _bar(cpu - free.get("CPU", 0), cpu, f"{cpu - free.get('CPU', 0):g}/{cpu:g} CPU"),
            _bar(gpu - free.get("GPU", 0), gpu, f"{gpu - free.get('GPU', 0):g}/{gpu:g} GPU") if gpu else "-",
            _bar(mem_used, mem_total, f"{format_size(mem_used)}/{format_size(mem_total)}") if mem_total else "-",
            _bar(store["used_bytes"], store["capacity_bytes"],
                 f"{format_size(store['used_bytes'])}/{format_size(store['capacity_bytes'])}"),
            _e(n.get("num_workers", 0)),
        ])
    return _table(["node", "state", "CPU", "GPU", "memory", "object store", "workers"], rows, "No nodes.")


def tasks_html(snap: Snapshot, cell: str = ALL_CELLS) -> str:
    tasks = snap.tasks if cell == ALL_CELLS else [t for t in snap.tasks if describe_cell(t.get("cell")) == cell]
    counts = collections.Counter(t["state"] for t in tasks)
    summary = " · ".join(f"<b>{counts[s]}</b> {s.lower()}" for s in TASK_STATES) + (
        "" if cell == ALL_CELLS else f" <small>(tasks of {_e(cell)})</small>")
    by_name: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    cells_of: dict[str, set] = collections.defaultdict(set)
    for t in tasks:
        by_name[t["name"]][t["state"]] += 1
        if t.get("cell"):
            cells_of[t["name"]].add(describe_cell(t["cell"]))
    rows = [[f"<code>{_e(name)}</code>", *(_e(c[s]) for s in TASK_STATES), _e(", ".join(sorted(cells_of[name])))]
            for name, c in sorted(by_name.items())]
    failures = [[f"<code>{_e(t['name'])}</code>", _e(describe_cell(t.get("cell"))),
                 f"{_e(t['error_type'])}: {_e(t['error_message'])}"] for t in recent_failures(tasks)]
    return (f"<p>{summary}</p>" + _table(["function", *(s.lower() for s in TASK_STATES), "cells"], rows, "No tasks.")
            + ("<p><b>Recent failures</b></p>" + _table(["function", "cell", "error"], failures, "")
               if failures else ""))


def actors_html(snap: Snapshot) -> str:
    rows = [[f"<code>{_e(a['class_name'])}</code>", _e(a.get("name") or ""), _e(a["state"]),
             _e(a.get("num_restarts", 0)), f"<code>{_e((a.get('node_id') or '')[:8])}</code>", _e(a.get("pid") or ""),
             _e(describe_cell(a.get("cell"))), _e(a.get("death_cause") or "")] for a in snap.actors]
    return _table(["class", "name", "state", "restarts", "node", "pid", "cell", "death cause"], rows, "No actors.")


def placement_groups_html(snap: Snapshot) -> str:
    rows = [[_e(pg.get("name") or pg.get("placement_group_id", "")[:8]), _e(pg.get("strategy", "")),
             _e(pg.get("state", "")), _e(pg.get("bundles", "")),
             _e(", ".join(str(n)[:8] for n in pg.get("bundle_nodes", []) or []))] for pg in snap.placement_groups]
    return _table(["name", "strategy", "state", "bundles", "node of each bundle"], rows, "No placement groups.")


def objects_html(snap: Snapshot, largest: int = 10) -> str:
    stores = [[f"<code>{_e(n['node_id'][:8])}</code>",
               _bar(n["object_store"]["used_bytes"], n["object_store"]["capacity_bytes"],
                    f"{format_size(n['object_store']['used_bytes'])}/"
                    f"{format_size(n['object_store']['capacity_bytes'])}"),
               _e(n["object_store"]["num_objects"]), _e(format_size(n["object_store"].get("spilled_bytes_total", 0)))]
              for n in snap.nodes]
    top = sorted(snap.objects, key=lambda o: o["size_bytes"], reverse=True)[:largest]
    rows = [[f"<code>{_e(o['object_id'][:16])}</code>", _e(format_size(o["size_bytes"])), _e(o.get("state", "")),
             _e(", ".join(snap.pins.get(o["object_id"], []) + [k.lower().replace("_", " ")
                                                              for k in o.get("reference_kinds", [])])),
             _e(describe_cell(o.get("cell"))), "yes" if o.get("spilled") else ""] for o in top]
    return (_table(["node", "used", "objects", "spilled (total)"], stores, "No object stores.")
            + f"<p><b>Largest objects</b> ({len(snap.objects)} in all)</p>"
            + _table(["object", "size", "state", "pinned by", "cell", "spilled"], rows, "No objects."))


def shown_jobs(jobs: list[dict], all_drivers: bool = False) -> tuple[list[dict], int]:
    """Submitted jobs and notebook kernels; other drivers (scripts, `runtime` CLI calls, the
    Jupyter server's own connection) only with all_drivers. Returns (rows, how many hidden)."""
    if all_drivers:
        return jobs, 0
    rows = [j for j in jobs if j.get("type") != "DRIVER" or j.get("kind") == "notebook"]
    return rows, len(jobs) - len(rows)


def jobs_html(snap: Snapshot, all_drivers: bool = False) -> str:
    jobs, hidden = shown_jobs(snap.jobs, all_drivers)
    rows = [[_e(j.get("job_id", "")), _e("notebook" if j.get("kind") == "notebook" else j.get("type", "").lower()),
             _e(j.get("status", "")), _e(j.get("entrypoint") or j.get("driver_pid") or ""),
             _e(time.strftime("%H:%M:%S", time.localtime(j["start_time"])) if j.get("start_time") else "")]
            for j in jobs]
    note = (f"<small>{hidden} other driver(s) hidden (scripts, runtime CLI calls, the Jupyter server): tick "
            "<i>all drivers</i> to see them.</small>") if hidden else ""
    return _table(["job", "kind", "status", "entrypoint / driver pid", "started"], rows, "No jobs.") + note
