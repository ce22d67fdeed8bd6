"""`%%remote` in a real ipykernel, driven over the Jupyter protocol (jupyter_client):
output streams into the cell while it runs, and a kernel interrupt cancels the remote
work. The kernel starts its own embedded cluster; shutting the kernel down stops it."""

from __future__ import annotations

import os
import queue
import time

import pytest
from jupyter_client.manager import start_new_kernel

pytestmark = [pytest.mark.timeout(180), pytest.mark.slow]


@pytest.fixture
def kernel(orrery_leak_check, tmp_path):
    km, kc = start_new_kernel(kernel_name="python3", cwd=str(tmp_path))
    try:
        execute(kc, "%load_ext kernel_ext\n%cluster start --num-cpus 2")
        yield km, kc
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=False)


def execute(kc, code, timeout=60):
    """Run a cell to completion; return (reply content, iopub messages of that cell)."""
    msg_id = kc.execute(code)
    reply = shell_reply(kc, msg_id, timeout)
    messages = collect_until_idle(kc, msg_id, timeout)
    assert reply["content"]["status"] == "ok", reply["content"]
    return reply["content"], messages


def shell_reply(kc, msg_id, timeout):
    """The reply to `msg_id`. Earlier replies are skipped: on a slow machine
    `wait_for_ready` sends kernel_info more than once, and a late answer to one of those
    can still be queued on the shell channel. Raises queue.Empty after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        reply = kc.get_shell_msg(timeout=max(0.01, deadline - time.monotonic()))
        if reply["parent_header"].get("msg_id") == msg_id:
            return reply


def collect_until_idle(kc, msg_id, timeout):
    deadline = time.monotonic() + timeout
    out = []
    while time.monotonic() < deadline:
        msg = kc.get_iopub_msg(timeout=max(0.1, deadline - time.monotonic()))
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        out.append(msg)
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            return out
    raise AssertionError(f"cell {msg_id} did not finish within {timeout} s")


def wait_for_stream(kc, msg_id, text, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            msg = kc.get_iopub_msg(timeout=0.5)
        except queue.Empty:
            continue
        if (msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "stream"
                and text in msg["content"]["text"]):
            return
    raise AssertionError(f"{text!r} did not appear in the cell's output within {timeout} s")


def stream_text(messages):
    return "".join(m["content"]["text"] for m in messages if m["msg_type"] == "stream")


def test_output_streams_into_the_cell_before_it_ends(kernel, tmp_path):
    _, kc = kernel
    go = tmp_path / "go"
    execute(kc, f"GO = {str(go)!r}")
    msg_id = kc.execute(
        "%%remote\nimport os, time\nprint('first', flush=True)\n"
        "deadline = time.time() + 60\n"
        "while not os.path.exists(GO) and time.time() < deadline:\n    time.sleep(0.01)\n"
        "print('second')")
    wait_for_stream(kc, msg_id, "first")
    with pytest.raises(queue.Empty):  # the cell is still running
        shell_reply(kc, msg_id, 0.2)
    go.write_text("go")
    reply = shell_reply(kc, msg_id, 60)
    assert reply["content"]["status"] == "ok", reply["content"]
    assert "second" in stream_text(collect_until_idle(kc, msg_id, 30))


def test_remote_traceback_in_error_reply_names_cell_line(kernel):
    _, kc = kernel
    msg_id = kc.execute("%%remote\nx = 1\nraise ValueError('bad value')")
    reply = shell_reply(kc, msg_id, 60)
    collect_until_idle(kc, msg_id, 30)
    content = reply["content"]
    assert content["status"] == "error" and content["ename"].endswith("ValueError)")
    text = "\n".join(content["traceback"])
    assert f"Cell In[{content['execution_count']}], line 3" in text, text
    assert "ValueError: bad value" in text


def test_interrupt_cancels_the_remote_task_and_frees_its_worker(kernel):
    km, kc = kernel
    msg_id = kc.execute("%%remote\nimport time\nprint('started', flush=True)\ntime.sleep(300)")
    wait_for_stream(kc, msg_id, "started")
    km.interrupt_kernel()
    reply = shell_reply(kc, msg_id, 60)
    messages = collect_until_idle(kc, msg_id, 30)
    assert reply["content"]["status"] == "error"
    assert reply["content"]["ename"] == "KeyboardInterrupt"
    shown = "\n".join(reply["content"]["traceback"])  # one explanation, none of our frames (issue 16.6)
    assert "was interrupted; its tasks were cancelled" in shown and "magics.py" not in shown, shown
    assert "cancelling the tasks" in stream_text(messages)
    # No worker is busy afterwards: every CPU is free again.
    content, messages = execute(
        kc,
        "import runtime, time\n"
        "deadline = time.time() + 30\n"
        "while runtime.available_resources().get('CPU') != runtime.cluster_resources()['CPU'] "
        "and time.time() < deadline:\n    time.sleep(0.05)\n"
        "print('free', runtime.available_resources().get('CPU'), runtime.cluster_resources()['CPU'])")
    assert "free 2.0 2.0" in stream_text(messages)


def test_session_survives_a_kernel_restart_through_attach(tmp_path, cli):
    """The session lives in a detached actor on a cluster that outlives the kernel."""
    cli.run("start", "--head", "--port", "0", "--num-cpus", "2")
    import json
    info = json.load(open(os.path.join(cli.tmpdir, "orrery", "current_cluster.json")))
    env = {**cli.env, "RUNTIME_ADDRESS": info["gcs_address"].removeprefix("tcp:")}
    km, kc = start_new_kernel(kernel_name="python3", cwd=str(tmp_path), env=env)
    try:
        execute(kc, "%load_ext kernel_ext")
        execute(kc, "%%remote --session nb1\nmodel = {'weights': [1, 2, 3]}\nsteps = 10")
        _, msgs = execute(kc, "%%remote --session nb1 --no-pull\nsteps += 5\nsteps")
        assert any(m["msg_type"] == "execute_result" and m["content"]["data"]["text/plain"] == "15" for m in msgs)
        kc.stop_channels()
        km.restart_kernel(now=False)
        kc = km.client()
        kc.start_channels()
        kc.wait_for_ready(timeout=60)
        execute(kc, "%load_ext kernel_ext")
        _, msgs = execute(kc, "%cluster attach nb1")
        assert "re-bound model, steps" in stream_text(msgs)
        _, msgs = execute(kc, "print(model['weights'], steps)")
        assert "[1, 2, 3] 15" in stream_text(msgs)
        _, msgs = execute(kc, "%%remote --session nb1\nsteps + 1")
        assert any(m["msg_type"] == "execute_result" and m["content"]["data"]["text/plain"] == "16" for m in msgs)
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=False)
