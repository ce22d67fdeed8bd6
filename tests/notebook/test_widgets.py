"""The cluster widget, `progress` and cell tags, after real tasks ran on a real cluster.

The widget is built in this process (no frontend: ipywidgets keeps state without one), driven by
a real IPython shell so cells get tags the way they do in a kernel."""

from __future__ import annotations

import sys

import cloudpickle

import runtime
from nbshell import run
from kernel_ext import cluster_view, progress
from kernel_ext.widgets import ClusterWidget
from runtime._testing.sync import SignalActor, wait_for

cloudpickle.register_pickle_by_value(sys.modules[__name__])

Signal = runtime.remote(num_cpus=0)(SignalActor)


CELL_DEFS = """
import runtime
@runtime.remote
def square(x):
    return x * x
@runtime.remote
def explode(x):
    raise ValueError(f"bad input {x}")
@runtime.remote
class Holder:
    def get(self):
        return 1
"""


def test_widget_shows_tasks_by_cell_failures_actors_objects_and_out_pins(ip):
    run(ip, CELL_DEFS)
    run(ip, "refs = [square.remote(i) for i in range(3)]\nruntime.get(refs)")
    squares_cell = f"In[{ip.execution_count - 1}]"
    run(ip, "bad = explode.remote(7)")
    run(ip, "h = Holder.remote()\nruntime.get(h.get.remote())")
    run(ip, "big = runtime.put(b'x' * 300_000)")
    run(ip, "big")  # Out[n] now pins it too
    out_n = ip.execution_count - 1

    widget = ClusterWidget(ip.user_ns)
    try:
        wait_for(lambda: (widget.refresh() or True) and "ValueError: bad input 7" in widget.panes["Tasks"].value,
                 timeout=10, what="the failed task in the Tasks tab")
        tasks = widget.panes["Tasks"].value
        assert "square" in tasks and "Recent failures" in tasks
        assert squares_cell in widget.cell_filter.options

        widget.cell_filter.value = squares_cell
        filtered = widget.panes["Tasks"].value
        assert "square" in filtered and "explode" not in filtered and "<b>3</b> finished" in filtered

        assert "Holder" in widget.panes["Actors"].value and "ALIVE" in widget.panes["Actors"].value
        objects = widget.panes["Object store"].value
        assert f"Out[{out_n}]" in objects and "big" in objects
        assert "CPU" in widget.panes["Nodes"].value
        assert "No placement groups." in widget.panes["Placement groups"].value
        widget.all_drivers.value = True  # this test process joined before loading kernel_ext: a script driver
        assert "RUNNING" in widget.panes["Jobs"].value
    finally:
        widget.close()
    runtime.kill(ip.user_ns["h"])


def test_widget_refreshes_from_a_thread_while_the_main_thread_waits_and_stops_when_closed(ip):
    signal = Signal.remote()
    run(ip, CELL_DEFS)
    widget = ClusterWidget(ip.user_ns, interval=0.2)
    widget.start()
    try:
        ip.user_ns["signal"] = signal
        run(ip, "@runtime.remote\ndef blocked(s):\n    return runtime.get(s.wait.remote())")
        ref = run(ip, "blocked.remote(signal)")
        # The main thread is not refreshing: only the background thread can show the running task.
        wait_for(lambda: "task(s) running" in widget.header.value and "1 task(s) running" in widget.header.value,
                 timeout=15, what="the widget's thread to show the running task")
        runtime.get(signal.send.remote())
        runtime.get(ref)
        wait_for(lambda: "0 task(s) running" in widget.header.value, timeout=15, what="the task to show as done")
    finally:
        widget.close()
    assert not widget.running
    count = widget.refreshes
    assert widget._stop.is_set() and count == widget.refreshes
    runtime.kill(signal)


def test_text_view_has_one_line_per_tab(shared_runtime):
    snap = cluster_view.collect({})
    lines = cluster_view.text_lines(snap)
    assert lines[0].startswith("Node ") and "CPU" in lines[0]
    for prefix in ("Tasks:", "Actors:", "Placement groups:", "Objects:", "Jobs:"):
        assert any(line.startswith(prefix) for line in lines), prefix


def test_cluster_magic_prints_text_when_noninteractive(ip, capsys, monkeypatch):
    monkeypatch.setenv("KERNEL_EXT_NONINTERACTIVE", "1")
    run(ip, "%cluster")
    out = capsys.readouterr().out
    assert "Tasks:" in out and "Node " in out


def test_progress_returns_values_and_prints_text_lines_when_slow(shared_runtime, capsys, monkeypatch):
    monkeypatch.setenv("KERNEL_EXT_NONINTERACTIVE", "1")
    signal = Signal.remote()

    @runtime.remote
    def gated(s, i):
        runtime.get(s.wait.remote())
        return i

    refs = [gated.remote(signal, i) for i in range(4)]
    assert progress(refs[:0]) == []
    import threading
    threading.Thread(target=lambda: (wait_for(lambda: "0/4 done" in capsys.readouterr().out or None, timeout=20,
                                              what="the progress line"), runtime.get(signal.send.remote())),
                     daemon=True).start()
    assert progress(refs, desc="gated", show_after=0.0) == [0, 1, 2, 3]
    runtime.kill(signal)


def test_placement_groups_tab_shows_strategy_state_and_nodes(ip):
    from runtime.util import placement_group, remove_placement_group
    pg = placement_group([{"CPU": 0.5}], strategy="SPREAD", name="shown")
    widget = ClusterWidget(ip.user_ns)
    try:
        runtime.get(pg.ready(), timeout=20)
        widget.refresh()
        pane = widget.panes["Placement groups"].value
        assert "shown" in pane and "SPREAD" in pane and "CREATED" in pane
        node = runtime.get_runtime_context().get_node_id()
        assert node[:8] in pane
    finally:
        widget.close()
        remove_placement_group(pg)


def test_jobs_tab_shows_submitted_jobs_and_notebooks_other_drivers_behind_a_toggle(own_cluster, cli):
    """Issue 16.8: `runtime` CLI calls and scripts are drivers too, but the Jobs tab lists
    submitted jobs and notebook kernels unless "all drivers" is ticked."""
    cli.run("start", "--head", "--port", "0", "--num-cpus", "1")
    cli.run("status")  # a CLI call: a driver of kind "cli"
    cli.run("job", "submit", "--", "echo", "hello")
    runtime.init(address="auto")
    try:
        snap = cluster_view.collect({})
        kinds = {(j.get("type"), j.get("kind")) for j in snap.jobs}
        assert ("DRIVER", "cli") in kinds and ("SUBMISSION", None) in kinds, kinds
        shown, hidden = cluster_view.shown_jobs(snap.jobs)
        assert hidden >= 2 and all(j.get("type") == "SUBMISSION" or j.get("kind") == "notebook" for j in shown)
        widget = ClusterWidget({})
        widget.refresh()
        assert "echo hello" in widget.panes["Jobs"].value and "runtime status" not in widget.panes["Jobs"].value
        assert "other driver(s) hidden" in widget.panes["Jobs"].value
        widget.all_drivers.value = True
        assert "status" in widget.panes["Jobs"].value and "hidden" not in widget.panes["Jobs"].value
        widget.close()
    finally:
        runtime.shutdown()
