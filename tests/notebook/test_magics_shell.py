"""`%%remote` and `%cluster` driven through a real IPython shell in this process,
against a real embedded cluster (this test process is the driver)."""

from __future__ import annotations

import numpy as np
import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

import runtime
from nbshell import run
from runtime import ObjectRef


def test_cell_ships_read_names_and_pulls_assigned_names(ip):
    ip.user_ns.update(x=20, unused=object())  # not read by the cell: never pickled
    value = run(ip, "%%remote\nimport os\ny = x + 1\npid = os.getpid()\ny * 2")
    assert value == 42
    assert ip.user_ns["y"] == 21
    assert ip.user_ns["pid"] != __import__("os").getpid()  # it really ran elsewhere


def test_cell_output_printed_in_the_cell(ip, capsys):
    run(ip, "%%remote\nprint('line one')\nimport sys\nprint('to stderr', file=sys.stderr)")
    out = capsys.readouterr()
    assert "line one" in out.out and "to stderr" in out.err
    assert "pid=" not in out.out  # the cell's own output is not prefixed like a task's


def test_value_over_max_bytes_stays_in_cluster_as_ref_with_note(ip, capsys):
    run(ip, "%%remote --max-bytes 1MiB\nimport numpy as np\nbig = np.arange(1_000_000)\nsmall = 3")
    assert isinstance(ip.user_ns["big"], ObjectRef)
    assert ip.user_ns["small"] == 3
    assert "big stays in the cluster: 7.6 MiB is over --max-bytes 1.0 MiB" in capsys.readouterr().out
    from kernel_ext.reprs import _object_ref_html
    assert "ready;" in _object_ref_html(ip.user_ns["big"])  # finished, though another process owns it
    np.testing.assert_array_equal(runtime.get(ip.user_ns["big"]), np.arange(1_000_000))


def test_output_names_chosen_with_o_and_none_with_no_pull(ip):
    run(ip, "%%remote -o a\na = 1\nb = 2")
    assert ip.user_ns["a"] == 1 and "b" not in ip.user_ns
    run(ip, "%%remote --no-pull\nc = 3")
    assert "c" not in ip.user_ns


def test_remote_error_has_cause_class_and_cell_line(ip):
    count = ip.execution_count  # the In[n] of the next cell
    with pytest.raises(ZeroDivisionError) as info:
        run(ip, "%%remote\na = 1\nb = 0\na / b")
    lines = info.value._render_traceback_()
    text = "\n".join(lines)
    assert f"Cell In[{count}], line 4" in text  # line 1 is the %%remote line
    assert "a / b" in text and "ZeroDivisionError: division by zero" in text
    assert "remote_cell.py" not in text and "/runtime/" not in text


def test_syntax_error_names_cell_line_and_sends_nothing(ip):
    with pytest.raises(UsageError, match=r"SyntaxError in Cell In\[\d+\], line 3.*Nothing was sent"):
        run(ip, "%%remote\nx = 1\ny = (")


def test_unpicklable_name_is_named_and_nothing_sent(ip):
    import threading
    ip.user_ns["lock"] = threading.Lock()
    with pytest.raises(UsageError, match="Cannot send `lock` to the cluster.*Nothing was sent"):
        run(ip, "%%remote\nprint(lock)")


def test_unknown_option_is_usage_error(ip):
    with pytest.raises(UsageError, match="unrecognized arguments: --bogus"):
        run(ip, "%%remote --bogus\n1")


def test_bad_option_values_are_usage_errors(ip):
    with pytest.raises(UsageError, match="--max-bytes"):
        run(ip, "%%remote --max-bytes lots\n1")
    with pytest.raises(UsageError, match="--env takes a JSON object"):
        run(ip, "%%remote --env [1]\n1")
    with pytest.raises(UsageError, match="--as NAME names the handle of an --async cell"):
        run(ip, "%%remote --as h\n1")


def test_env_and_resources_options_reach_the_task(ip):
    value = run(ip, "%%remote --env '{\"CELL_FLAG\": \"on\"}' --num-cpus 0.5\nimport os\nos.environ['CELL_FLAG']")
    assert value == "on"


def test_working_dir_option_ships_the_directory_and_is_the_cells_cwd(ip, tmp_path):
    (tmp_path / "notes.txt").write_text("from the notebook's directory")
    value = run(ip, f"%%remote --working-dir {tmp_path} --env '{{\"A\": \"1\"}}'\nopen('notes.txt').read()")
    assert value == "from the notebook's directory"
    with pytest.raises(UsageError, match="--working-dir .* is not a directory"):
        run(ip, f"%%remote --working-dir {tmp_path / 'missing'}\n1")


def test_pip_option_makes_a_pip_runtime_env():
    from types import SimpleNamespace
    from kernel_ext.remote_magic import task_options
    opts = task_options(SimpleNamespace(pip="tabulate==0.9.0, six", env='{"A": "1"}'), {})
    assert opts["runtime_env"] == {"env_vars": {"A": "1"}, "pip": ["tabulate==0.9.0", "six"]}


def test_line_magic_evaluates_expression_remotely(ip):
    ip.user_ns["x"] = 5
    assert run(ip, "%remote x * 3") == 15


def test_remote_config_sets_defaults_for_later_cells(ip, capsys):
    run(ip, "%remote_config --max-bytes 1KB")
    try:
        run(ip, "%%remote\nblob = b'x' * 10_000")
        assert isinstance(ip.user_ns["blob"], ObjectRef)
    finally:
        run(ip, "%remote_config --reset")


def test_timeout_cancels_the_cell(ip):
    with pytest.raises(UsageError, match="ran past --timeout 1.0 s and was cancelled"):
        run(ip, "%%remote --timeout 1\nimport time\ntime.sleep(60)")


def test_async_cell_binds_awaitable_ref_and_later_names(ip):
    from runtime._testing.sync import wait_for
    ip.user_ns["time"] = "the notebook's own"
    run(ip, "%%remote --async --as handle\nimport time\nz = 7\nz + 1")
    handle = ip.user_ns["handle"]
    assert isinstance(handle, ObjectRef)
    assert runtime.get(handle, timeout=30) == 8  # the cell's value, not our envelope
    wait_for(lambda: ip.user_ns.get("z") == 7, timeout=10, what="the async cell's names are bound when it is done")
    assert ip.user_ns["time"] == "the notebook's own"  # the module the cell imported stays there


def test_async_session_cell_handle_is_the_value(ip):
    try:
        run(ip, "%%remote --async --as h --session async_s\nw = [1, 2]\nsum(w)")
        assert runtime.get(ip.user_ns["h"], timeout=30) == 3
        assert run(ip, "%%remote --session async_s --no-pull\nw + [3]") == [1, 2, 3]  # the session kept w
    finally:
        runtime.kill(runtime.get_actor("session:async_s", namespace="kernel_ext"))


def test_blocking_cell_does_not_send_back_its_imports(ip):
    import time as time_module
    ip.user_ns["np"] = "not numpy"
    run(ip, "%%remote\nimport json as np\nimport time\nx = np.dumps([1])")
    assert ip.user_ns["x"] == "[1]" and ip.user_ns["np"] == "not numpy"
    assert ip.user_ns.get("time", time_module) is time_module


def test_cluster_status_and_gc(ip, capsys):
    run(ip, "%cluster status")
    assert "Cluster: 1 node(s)" in capsys.readouterr().out
    with pytest.raises(UsageError, match="Unknown %cluster action 'bogus'"):
        run(ip, "%cluster bogus")
    run(ip, "%cluster gc")
    assert "Released" in capsys.readouterr().out


# -- --spread and --session --------------------------------------------------------------------


def test_spread_runs_n_copies_with_prefixed_output_and_lists(ip, capsys):
    value = run(ip, "%%remote --spread 3\nimport os\nprint('hello from', worker_index)\nsquare = worker_index ** 2\n"
                    "(worker_index, num_workers)")
    assert value == [(0, 3), (1, 3), (2, 3)]
    assert ip.user_ns["square"] == [0, 1, 4]
    out = capsys.readouterr().out
    for i in range(3):
        assert f"[worker {i}] hello from {i}\n" in out


def test_spread_groups_failures(ip):
    with pytest.raises(Exception) as info:
        run(ip, "%%remote --spread 4\nif worker_index != 1:\n    raise ValueError('no good')\n1")
    assert type(info.value).__name__ == "SpreadError"
    assert "1 of 4 workers succeeded; 3 × ValueError on workers 0, 2, 3: no good" in str(info.value)


def _shown(ip, source: str, capsys) -> str:
    """What IPython shows for a failing cell (its traceback text), as a notebook would."""
    ip.run_cell(source, store_history=True)
    return capsys.readouterr().out


def test_errors_show_the_users_code_and_one_explanation_not_our_frames(ip, capsys):
    """Issue 16.6: a --spread failure shows the failing worker's remote traceback at the cell's
    line; a worker death under --retries names --retries; neither shows kernel_ext frames."""
    shown = _shown(ip, "%%remote --spread 2\nx = 1\nif worker_index == 1:\n    raise ValueError('no good')\n1", capsys)
    assert "SpreadError: cell In[" in shown and "1 × ValueError on worker 1: no good" in shown
    assert "line 4" in shown and "raise ValueError('no good')" in shown, shown
    assert "kernel_ext" not in shown and "magics.py" not in shown, shown
    shown = _shown(ip, "%%remote --retries 1\nimport os\nos._exit(1)", capsys)
    assert "WorkerCrashedError: the worker running cell In[" in shown and "after --retries 1" in shown, shown
    assert "max_retries" not in shown and "kernel_ext" not in shown and "File " not in shown, shown


def test_session_keeps_its_namespace_across_cells_and_attach_rebinds(ip, capsys):
    from kernel_ext import sessions
    try:
        run(ip, "%%remote --session s-test\nimport os\ncounter = 1\nkept_remote = list(range(3))\npid = os.getpid()")
        first_pid = ip.user_ns["pid"]
        assert run(ip, "%%remote --session s-test --no-pull\ncounter += 1\ncounter") == 2
        assert run(ip, "%%remote --session s-test -o pid\npid = os.getpid()") is None  # `os` is still imported there
        assert ip.user_ns["pid"] == first_pid  # the same actor process
        assert "s-test" in sessions.list_names()
        for name in ("counter", "kept_remote", "pid"):
            ip.user_ns.pop(name)
        run(ip, "%cluster attach s-test")
        assert ip.user_ns["counter"] == 2  # the session's current value of a name it once sent back
        assert ip.user_ns["kept_remote"] == [0, 1, 2]
        assert "re-bound" in capsys.readouterr().out
    finally:
        runtime.kill(runtime.get_actor("session:s-test", namespace="kernel_ext"))


def test_attach_unknown_session_says_which_exist(ip):
    with pytest.raises(UsageError, match="No session named 'nope'.*first `%%remote --session nope`"):
        run(ip, "%cluster attach nope")


def test_spread_and_session_bad_combinations(ip):
    with pytest.raises(UsageError, match="--spread N takes N >= 1"):
        run(ip, "%%remote --spread 0\n1")
    with pytest.raises(UsageError, match="--pg nogroup: No placement group named 'nogroup'"):
        run(ip, "%%remote --pg nogroup\n1")


def test_pg_runs_the_cell_in_a_bundle_of_a_named_group(ip):
    from runtime.util import placement_group, remove_placement_group
    pg = placement_group([{"CPU": 1}, {"CPU": 1}], name="cellgroup")
    try:
        runtime.get(pg.ready(), timeout=20)
        got = run(ip, "%%remote --pg cellgroup:1\nimport runtime\nruntime.get_runtime_context().get_assigned_resources()")
        assert got[f"CPU_group_1_{pg.id}"] == 1.0
        html = ip.display_formatter.formatters["text/html"](pg)
        assert "cellgroup" in html and "CREATED" in html and "on node" in html
    finally:
        remove_placement_group(pg)


def test_output_that_arrives_before_the_route_is_kept_for_the_cell(shared_runtime):
    """A task can print before `.remote()` returned its ref: the router holds that output."""
    from kernel_ext.output_router import DONE, router

    @runtime.remote
    def noop():
        return 1

    r = router()
    r.expect("cell In[99]")
    ref = noop.remote()
    tid = bytes(ref._id[:16])
    early = {"t": tid, "n": "cell In[99]", "pid": 1, "s": 1, "d": "printed at once\n"}
    assert r.handle(early)  # held, not printed elsewhere
    assert not r.handle({**early, "n": "another task"} | {"t": b"x" * 16})  # others fall through
    q = r.open(ref, "cell In[99]")
    assert q.get(timeout=10) is early
    assert q.get(timeout=10) is DONE
    r.close(ref)
    assert "cell In[99]" not in r.expected


def test_cluster_list_marks_this_notebooks_cluster_and_lists_sessions(ip, capsys):
    run(ip, "%%remote --session listed\nx = 1")
    try:
        run(ip, "%cluster list")
        out = capsys.readouterr().out
        here = runtime.get_runtime_context().gcs_address.removeprefix("tcp:")
        assert f"* {here}  embedded" in out
        assert "Sessions in this notebook's cluster: listed" in out
    finally:
        runtime.kill(runtime.get_actor("session:listed", namespace="kernel_ext"))


def test_cluster_start_with_several_nodes_spreads_cells_over_them(own_cluster, capsys):
    """`%cluster start --nodes 2`: two node managers on this machine, as two machines would be."""
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "kernel_ext")
    try:
        shell.run_line_magic("cluster", "start --nodes 2 --num-cpus 1")
        assert "2 node(s)" in capsys.readouterr().out
        shell.run_cell_magic("remote", "--spread 2 -o where",
                             "import runtime\nwhere = runtime.get_runtime_context().get_node_id()")
        where = shell.user_ns["where"]
        assert len(where) == 2 and len(set(where)) == 2, where
        with pytest.raises(UsageError, match="--nodes must be at least 1"):
            shell.run_line_magic("cluster", "stop") or shell.run_line_magic("cluster", "start --nodes 0")
    finally:
        if runtime.is_initialized():
            shell.run_line_magic("cluster", "stop")
        shell.reset()
