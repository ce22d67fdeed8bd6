"""Live views for notebooks: the cluster widget and `progress(refs)`.

Both read only the public state API. The cluster widget refreshes from a background thread so
it stays current while a cell blocks the kernel; it stops when closed or when the cluster goes
away. With `KERNEL_EXT_NONINTERACTIVE=1` (batch runs set it) or outside a kernel with a
frontend, both print plain text lines instead.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any, Iterable

import runtime

from . import cluster_view as view

__all__ = ["ClusterWidget", "interactive", "progress", "show_cluster"]


def interactive() -> bool:
    """Live widgets only where a frontend can show them: a kernel, not a terminal or batch run."""
    if os.environ.get("KERNEL_EXT_NONINTERACTIVE", "") not in ("", "0"):
        return False
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def _widgets() -> Any:
    import ipywidgets
    return ipywidgets


class ClusterWidget:
    """Tabs: Nodes, Tasks (with a cell filter), Actors, Placement groups, Object store, Jobs."""

    def __init__(self, user_ns: dict | None = None, interval: float = 1.0) -> None:
        w = _widgets()
        self.user_ns = user_ns if user_ns is not None else {}
        self.interval = interval
        self.header = w.HTML()
        self.panes = {name: w.HTML() for name in view.TABS}
        self.cell_filter = w.Dropdown(options=[view.ALL_CELLS], value=view.ALL_CELLS, description="cell")
        self.cell_filter.observe(lambda change: self._render_tasks(), names="value")
        tasks_box = w.VBox([self.cell_filter, self.panes["Tasks"]])
        self.all_drivers = w.Checkbox(value=False, description="all drivers", indent=False)
        self.all_drivers.observe(lambda change: self._render_jobs(), names="value")
        jobs_box = w.VBox([self.all_drivers, self.panes["Jobs"]])
        boxes = {"Tasks": tasks_box, "Jobs": jobs_box}
        children = [boxes.get(name, self.panes[name]) for name in view.TABS]
        self.tabs = w.Tab(children=children)
        self.tabs.titles = view.TABS
        self.box = w.VBox([self.header, self.tabs])
        self.snapshot: view.Snapshot | None = None
        self.refreshes = 0
        self.error = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _ipython_display_(self) -> None:
        from IPython.display import display
        display(self.box)
        self.start()

    # -- refreshing ------------------------------------------------------------------------
    def refresh(self) -> None:
        """Read the state API once and update every tab (any thread)."""
        snap = view.collect(self.user_ns)
        self.snapshot = snap
        for name, render in (("Nodes", view.nodes_html), ("Actors", view.actors_html),
                             ("Placement groups", view.placement_groups_html), ("Object store", view.objects_html)):
            self.panes[name].value = render(snap)
        self._render_jobs()
        cells = [view.ALL_CELLS, *snap.cells()]
        if list(self.cell_filter.options) != cells:
            keep = self.cell_filter.value if self.cell_filter.value in cells else view.ALL_CELLS
            self.cell_filter.options = cells
            self.cell_filter.value = keep
        self._render_tasks()
        cpu = sum(n["resources_total"].get("CPU", 0) for n in snap.nodes)
        free = sum(n["resources_available"].get("CPU", 0) for n in snap.nodes)
        self.header.value = (f"<b>Cluster</b>: {len(snap.nodes)} node(s), CPU {cpu - free:g}/{cpu:g} in use, "
                             f"{sum(t['state'] == 'RUNNING' for t in snap.tasks)} task(s) running "
                             f"<small>(updated {time.strftime('%H:%M:%S', time.localtime(snap.taken_at))})</small>")
        self.refreshes += 1

    def _render_jobs(self) -> None:
        if self.snapshot is not None:
            self.panes["Jobs"].value = view.jobs_html(self.snapshot, self.all_drivers.value)

    def _render_tasks(self) -> None:
        if self.snapshot is not None:
            self.panes["Tasks"].value = view.tasks_html(self.snapshot, self.cell_filter.value)

    def start(self) -> None:
        if self._thread is None and not self._stop.is_set():
            self._thread = threading.Thread(target=self._run, name="kernel_ext-cluster-widget", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            if self.box.comm is None:  # closed from the frontend or by close_all()
                break
            if not runtime.is_initialized():
                self.header.value = "<b>Cluster</b>: disconnected; the view stopped. Run %cluster to open a new one."
                break
            try:
                self.refresh()
                self.error = ""
            except Exception as e:  # noqa: BLE001 - a view must not die on one failed read
                if not runtime.is_initialized():
                    continue  # reported at the top of the loop
                self.error = f"{type(e).__name__}: {e}"
                self.header.value = f"<b>Cluster</b>: could not refresh ({self.error}); retrying."
            self._stop.wait(self.interval)  # the refresh period, not a synchronisation

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)
        self.box.close()


def show_cluster(user_ns: dict | None = None) -> ClusterWidget | None:
    """`%cluster` with no action: the live widget, or its text form in batch runs and terminals."""
    if interactive():
        widget = ClusterWidget(user_ns)
        widget.refresh()
        from IPython.display import display
        display(widget)
        return widget
    print("\n".join(view.text_lines(view.collect(user_ns))))
    return None


# -- progress --------------------------------------------------------------------------------
class _TextBar:
    def __init__(self, total: int, desc: str) -> None:
        self.total, self.desc, self.last = total, desc, 0.0

    def update(self, done: int, final: bool = False) -> None:
        now = time.monotonic()
        if final or now - self.last >= 5.0:
            self.last = now
            print(f"{self.desc}: {done}/{self.total} done" + (" (finished)" if final else ""), flush=True)


class _WidgetBar:
    def __init__(self, total: int, desc: str) -> None:
        w = _widgets()
        from IPython.display import display
        self.bar = w.IntProgress(min=0, max=total, value=0, description=desc[:20])
        self.label = w.Label(f"0/{total}")
        self.total = total
        display(w.HBox([self.bar, self.label]))

    def update(self, done: int, final: bool = False) -> None:
        self.bar.value = done
        self.label.value = f"{done}/{self.total}" + (" done" if final else "")
        if final:
            self.bar.bar_style = "success"


def progress(refs: Iterable[Any], desc: str = "tasks", show_after: float = 2.0, poll: float = 0.2) -> list[Any]:
    """Wait for `refs` and return their values (like `runtime.get`), showing a progress bar once
    the wait has lasted `show_after` seconds: a widget in a notebook, text lines in batch runs."""
    refs = list(refs)
    pending, done = list(refs), 0
    started = time.monotonic()
    bar: Any = None
    while pending:
        ready, pending = runtime.wait(pending, num_returns=len(pending), timeout=poll)
        done += len(ready)
        if bar is None and pending and time.monotonic() - started >= show_after:
            bar = _WidgetBar(len(refs), desc) if interactive() else _TextBar(len(refs), desc)
        if bar is not None:
            bar.update(done, final=not pending)
    return runtime.get(refs)
