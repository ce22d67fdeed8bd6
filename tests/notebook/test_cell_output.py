"""Issue 16.3 and 16.4 in a real ipykernel, driven over the Jupyter protocol: a `%%remote` cell
printing 100,000 lines and a plain task printing 20,000 deliver every line, in far fewer
stream messages than lines (so the IOPub rate limit is never hit), and output and warnings of
a task land under the cell that submitted it, even while a later cell runs."""

from __future__ import annotations

import time

import pytest

from test_kernel import execute, kernel, shell_reply  # noqa: F401 - the fixture and its helpers

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]


def _collect(kc, until_idle_of: str, timeout: float = 120) -> dict[str, list[dict]]:
    """Every iopub message until `until_idle_of` goes idle, by the msg_id of its cell."""
    by_cell: dict[str, list[dict]] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        msg = kc.get_iopub_msg(timeout=max(0.1, deadline - time.monotonic()))
        parent = msg["parent_header"].get("msg_id", "")
        by_cell.setdefault(parent, []).append(msg)
        if parent == until_idle_of and msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            return by_cell
    raise AssertionError(f"cell {until_idle_of} did not finish within {timeout} s")


def _streams(messages: list[dict]) -> tuple[str, int]:
    chunks = [m["content"]["text"] for m in messages if m["msg_type"] == "stream"]
    return "".join(chunks), len(chunks)


def test_every_line_arrives_in_few_messages(kernel):  # noqa: F811
    _, kc = kernel
    cell = kc.execute("%%remote\nfor i in range(100_000):\n    print('line', i)")
    assert shell_reply(kc, cell, 120)["content"]["status"] == "ok"
    text, messages = _streams(_collect(kc, cell)[cell])
    lines = text.splitlines()
    assert len(lines) == 100_000 and lines[0] == "line 0" and lines[-1] == "line 99999"
    assert messages < 2_000, f"{messages} stream messages for 100,000 lines"

    plain = kc.execute("import runtime\n@runtime.remote\ndef noisy():\n    for i in range(20_000):\n"
                       "        print('t', i)\n    return 1\nruntime.get(noisy.remote())")
    assert shell_reply(kc, plain, 120)["content"]["status"] == "ok"
    text, messages = _streams(_collect(kc, plain)[plain])
    lines = [line for line in text.splitlines() if "noisy pid=" in line]
    assert len(lines) == 20_000 and lines[-1].endswith(" t 19999") and messages < 1_000


def test_output_and_warnings_go_to_the_submitting_cell(kernel, tmp_path):  # noqa: F811
    _, kc = kernel
    go = tmp_path / "go"
    ready = tmp_path / "ready"
    ready.write_text("")
    execute(kc, f"GO, READY = {str(go)!r}, {str(ready)!r}\nimport os, runtime, time\n"
                "@runtime.remote(max_retries=1)\n"
                "def late(go, crash, text='late line'):\n"
                "    while not os.path.exists(go):\n        time.sleep(0.01)\n"
                "    print(text, flush=True)\n"
                "    if crash and not os.path.exists(go + '.crashed'):\n"
                "        open(go + '.crashed', 'w').close()\n        os._exit(1)  # the worker dies: a retry warning\n"
                "    return 1")
    # An earlier cell leases the workers first: later tasks reuse their connections, which is
    # where ipykernel saw the earlier cell as the current one.
    warm = kc.execute("print(runtime.get([late.remote(READY, False, 'warm') for _ in range(4)]))")
    assert shell_reply(kc, warm, 60)["content"]["status"] == "ok"
    submitting = kc.execute("ref = late.remote(GO, True)")
    assert shell_reply(kc, submitting, 60)["content"]["status"] == "ok"
    later = kc.execute("open(GO, 'w').close()\nprint('got', runtime.get(ref, timeout=60))")
    assert shell_reply(kc, later, 120)["content"]["status"] == "ok"
    by_cell = _collect(kc, later)
    assert "late line" not in _streams(by_cell.get(warm, []))[0]
    text_submitting, _ = _streams(by_cell.get(submitting, []))
    text_later, _ = _streams(by_cell[later])
    assert "late line" in text_submitting and "A worker died while running task `late`" in text_submitting
    assert "got 1" in text_later
    assert "late line" not in text_later and "worker died" not in text_later


def test_infeasible_cell_says_why_at_once_and_keeps_waiting(kernel):  # noqa: F811
    """Issue 16.5: `--num-gpus 1` on a CPU-only cluster says what is missing and what the
    cluster has within seconds, in the cell, and waits until --timeout."""
    from test_kernel import wait_for_stream
    _, kc = kernel
    for _ in range(2):  # each cell says it, not only the first
        started = time.monotonic()
        cell = kc.execute("%%remote --num-gpus 1 --timeout 8\nprint('never')")
        wait_for_stream(kc, cell, "the cluster's only node does not have {GPU: 1}", timeout=10)
        assert time.monotonic() - started < 5
        reply = shell_reply(kc, cell, 60)
        assert reply["content"]["status"] == "error" and "ran past --timeout 8" in reply["content"]["evalue"]
        assert time.monotonic() - started >= 8


def test_spread_progress_line_is_gone_after_the_result(kernel):  # noqa: F811
    """Issue 16.8: the `k/N workers done` line of a long --spread cell is updated in place and
    emptied when the cell ends."""
    _, kc = kernel
    cell = kc.execute("%%remote --spread 2\nimport time\ntime.sleep(3)\nworker_index")
    assert shell_reply(kc, cell, 60)["content"]["status"] == "ok"
    messages = _collect(kc, cell)[cell]
    shown = [m for m in messages if m["msg_type"] == "display_data" and "workers done" in
             m["content"]["data"].get("text/plain", "")]
    assert len(shown) == 1, messages
    display_id = shown[0]["content"]["transient"]["display_id"]
    updates = [m for m in messages if m["msg_type"] == "update_display_data"
               and m["content"]["transient"]["display_id"] == display_id]
    assert updates and updates[-1]["content"]["data"]["text/plain"] == ""
    assert "workers done" not in _streams(messages)[0]
    assert any(m["msg_type"] == "execute_result" and "[0, 1]" in m["content"]["data"]["text/plain"] for m in messages)
