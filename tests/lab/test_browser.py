"""The JupyterLab frontend in a real headless Chromium against a real cluster.

Opens JupyterLab, opens the Orrery sidebar through the command palette, and checks that
the node row and a running task appear, that the status bar shows cluster CPU use, and
that the task's Cancel button cancels it (the driver's `get` raises TaskCancelledError).
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import time
from pathlib import Path

import cloudpickle
import pytest

import runtime
from runtime._testing.sync import wait_for
from runtime.exceptions import TaskCancelledError

from . import jupyter_proc
from .browser import UI_TIMEOUT_MS, chromium, chromium_page
from .jupyter_proc import hold_cpu_until

cloudpickle.register_pickle_by_value(sys.modules[__name__])
cloudpickle.register_pickle_by_value(jupyter_proc)  # workers cannot import the tests' modules

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

# Outside the test's TMPDIR, which is removed after the test.
FAILURE_SCREENSHOT = "/tmp/orrery-lab-browser-failure.png"


def _open_command_palette(page, sync_api) -> None:
    """Open the palette as a user would, retrying until it shows: the shortcut and the menus are
    live only once JupyterLab has finished starting, which nothing on the page announces, and a
    key press goes nowhere while nothing has focus. Alternates the View menu and Ctrl+Shift+C."""
    palette = page.locator(".lm-CommandPalette-input")
    deadline = time.monotonic() + UI_TIMEOUT_MS / 1000
    attempt = 0
    while True:
        attempt += 1
        try:
            if attempt % 2:
                page.click(".lm-MenuBar-itemLabel:text-is('View')", timeout=2000)
                page.click(".lm-Menu-itemLabel:text-is('Activate Command Palette')", timeout=2000)
            else:
                page.click("#jp-main-dock-panel", timeout=2000)  # give the page focus for the shortcut
                page.keyboard.press("Control+Shift+C")
            palette.wait_for(state="visible", timeout=2000)
            return
        except sync_api.TimeoutError:
            page.keyboard.press("Escape")  # close a half-open menu before the next try
            if time.monotonic() > deadline:
                raise


lab_browser_task = runtime.remote(hold_cpu_until)


@runtime.remote
def lab_quick(x):
    return x


@contextlib.contextmanager
def _lab_page(sync_api, url: str, server):
    """A headless Chromium page on JupyterLab at `url`; on failure a screenshot, the browser
    console and the server log are printed with the test's output."""
    with chromium_page(sync_api) as (page, console):
        try:
            page.goto(url)
            # Our plugin has activated once its sidebar tab is there.
            page.wait_for_selector(".jp-SideBar [data-id='orrery-sidebar']")
            yield page, console
            if os.environ.get("ORRERY_LAB_SCREENSHOT"):  # to look at the page by hand
                page.screenshot(path=os.environ["ORRERY_LAB_SCREENSHOT"])
        except Exception:
            page.screenshot(path=FAILURE_SCREENSHOT)
            print(f"screenshot: {FAILURE_SCREENSHOT}\nbrowser console:\n" + "\n".join(console[-40:]))
            print(f"server log:\n{server.log()}")
            raise


def test_sidebar_shows_cluster_and_cancels_a_running_task(lab_app, lab_tmp: Path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    chromium()

    started, release = lab_tmp / "started", lab_tmp / "release"
    ref = lab_browser_task.remote(str(started), str(release))
    wait_for(started.exists, timeout=60, what="the task running")

    with _lab_page(sync_api, f"{lab_app.url}/lab?token={lab_app.token}", lab_app) as (page, console):
        _open_command_palette(page, sync_api)
        # The command, through the palette, is how a user opens the dashboard.
        page.fill(".lm-CommandPalette-input", "Orrery: Open dashboard")
        page.click(".lm-CommandPalette-item:has-text('Orrery: Open dashboard')")

        sidebar = page.locator("#orrery-sidebar")
        sidebar.wait_for(state="visible")
        node_row = sidebar.locator("tr.orrery-node-row")
        node_row.first.wait_for()
        assert "(head)" in node_row.first.inner_text() and "ALIVE" in node_row.first.inner_text()

        task_row = sidebar.locator("tr.orrery-task-row[data-state='RUNNING']", has_text="hold_cpu_until")
        task_row.wait_for()

        status = page.locator(".orrery-StatusItem")
        sync_api.expect(status).to_contain_text("CPU 1/2", timeout=UI_TIMEOUT_MS)
        sync_api.expect(status).to_contain_text("store ")

        task_row.locator("button.orrery-cancel").click()
        with pytest.raises(TaskCancelledError):
            runtime.get(ref, timeout=60)
        cancelled = sidebar.locator("tr.orrery-task-row[data-state='CANCELLED']", has_text="hold_cpu_until")
        cancelled.wait_for()
        assert cancelled.locator("button.orrery-cancel").count() == 0
        sync_api.expect(status).to_contain_text("CPU 0/2", timeout=UI_TIMEOUT_MS)
        assert sidebar.locator(".orrery-error").inner_text() == "", console

        # Finished tasks are counted by function with a progress bar, not listed one by one.
        assert runtime.get([lab_quick.remote(i) for i in range(3)]) == [0, 1, 2]
        quick = sidebar.locator("tr.orrery-function-row[data-function='lab_quick']")
        sync_api.expect(quick).to_contain_text("finished 3", timeout=UI_TIMEOUT_MS)
        assert quick.locator(".orrery-progress-finished").count() == 1
        assert sidebar.locator("tr.orrery-task-row", has_text="lab_quick").count() == 0
        assert node_row.first.locator(".orrery-bar", has_text="CPU").count() == 1
        assert node_row.first.locator(".orrery-bar", has_text="store").count() == 1
        # The task stream: what ran on which worker lately, the finished ones included.
        assert sidebar.locator("svg.orrery-stream rect.orrery-stream-finished").count() >= 3
        assert sidebar.locator("svg.orrery-stream rect.orrery-stream-cancelled").count() == 1

        # The full web UI opens in a lab tab, through the Jupyter server's proxy.
        sidebar.locator("button.orrery-open-dashboard").click()
        frame = page.frame_locator("#orrery-web-ui iframe")
        sync_api.expect(frame.locator(".card.node")).to_contain_text("Head 127.0.0.1", timeout=UI_TIMEOUT_MS)


def test_sidebar_follows_the_notebooks_own_cluster_through_a_kernel_restart(cli, lab_tmp: Path, orrery_leak_check):
    """Issue 16.2: with no cluster on the machine, a notebook starts its own; the sidebar and the
    status bar show it; after a kernel restart the notebook's new cluster (3 CPUs) is shown."""
    import nbformat

    from .jupyter_proc import start_jupyter
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    chromium()
    env = dict(cli.env)
    env.pop("RUNTIME_ADDRESS", None)
    server = start_jupyter(lab_tmp, env, app="lab")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(f"%load_ext kernel_ext\n%cluster start --num-cpus {n}")
                                         for n in (1, 3)],
                                  metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                           "language": "python"}})
    nbformat.write(nb, lab_tmp / "notebooks" / "follow.ipynb")
    try:
        with _lab_page(sync_api, f"{server.url}/lab/tree/follow.ipynb?token={server.token}", server) as (page, _):
            page.click(".jp-SideBar [data-id='orrery-sidebar']")  # open the sidebar by its tab
            sidebar = page.locator("#orrery-sidebar")
            sidebar.wait_for(state="visible")
            status = page.locator(".orrery-StatusItem")
            cells = page.locator(".jp-Notebook .jp-CodeCell")
            cells.first.wait_for()

            def run_cell(i: int) -> None:
                # Only once the kernel is idle: Shift+Enter on a notebook whose kernel is still
                # starting moves to the next cell without running this one (seen under load).
                prompt = cells.nth(i).locator(".jp-InputPrompt")
                for attempt in range(6):
                    sync_api.expect(page.locator(".jp-StatusBar-Item", has_text="| Idle").first).to_be_visible()
                    cells.nth(i).locator(".jp-InputArea-editor").click()
                    page.keyboard.press("Shift+Enter")
                    try:  # queued or run: the prompt shows [*] or [n] at once
                        sync_api.expect(prompt).to_have_text(re.compile(r"\[(\*|\d+)\]:"), timeout=5000)
                        return
                    except AssertionError:
                        if attempt == 5:
                            raise

            run_cell(0)
            sync_api.expect(status).to_contain_text("CPU 0/1", timeout=UI_TIMEOUT_MS)
            sync_api.expect(sidebar.locator(".orrery-status")).to_contain_text("this notebook's cluster")

            page.click(".lm-MenuBar-itemLabel:text-is('Kernel')")
            page.click(".lm-Menu-itemLabel:text-matches('^Restart Kernel')")
            page.click(".jp-Dialog-button.jp-mod-accept")
            run_cell(1)
            sync_api.expect(status).to_contain_text("CPU 0/3", timeout=UI_TIMEOUT_MS)
            sync_api.expect(sidebar.locator(".orrery-status")).to_contain_text("this notebook's cluster")
    finally:
        server.stop()
