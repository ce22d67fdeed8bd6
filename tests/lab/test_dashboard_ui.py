"""The dashboard's web UI in a real browser (Debian's Chromium through playwright): the page
shows the node with its bars, a running job's log lines, and a task that failed with its error.
A screenshot of each view is kept in build/test-artifacts/."""

from __future__ import annotations

import json
import socket
import urllib.request
from pathlib import Path

import pytest

from runtime._testing.sync import wait_for

from .browser import chromium, chromium_page

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
ARTIFACTS = Path(__file__).resolve().parents[2] / "build" / "test-artifacts"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_web_ui_shows_node_job_log_and_failed_task(cli, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    chromium()
    port = _free_port()
    cli.run("start", "--head", "--port", "0", "--num-cpus", "2", "--client-server-port", "0",
            "--dashboard-port", str(port))
    cli.driver("""
        import runtime
        runtime.init(address="auto")

        @runtime.remote(max_retries=0)
        def divide(x):
            return 10 / x

        try:
            runtime.get(divide.remote(0))
        except ZeroDivisionError:
            pass
    """)
    release = tmp_path / "release"
    job = json.loads(urllib_post(f"http://127.0.0.1:{port}/api/jobs/", {
        "entrypoint": f"python -c \"import os, time\nprint('job line one', flush=True)\n"
                      f"while not os.path.exists('{release}'): time.sleep(0.05)\nprint('job done')\""}))["submission_id"]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    base = f"http://127.0.0.1:{port}/"
    with chromium_page(sync_api) as (page, console):
        try:
            page.goto(base)
            node = page.wait_for_selector(".card.node")
            assert "Head 127.0.0.1" in node.inner_text() and "object store" in node.inner_text()
            assert page.locator(".card.node .bar").count() >= 2
            page.screenshot(path=str(ARTIFACTS / "dashboard-overview.png"))

            page.click("#tabs a[data-view=jobs]")
            page.click(f".job-link[data-job='{job}']")
            page.wait_for_function("document.getElementById('job-log') && "
                                   "document.getElementById('job-log').textContent.includes('job line one')")
            assert "RUNNING" in page.inner_text("#view")
            page.screenshot(path=str(ARTIFACTS / "dashboard-jobs.png"))

            page.click("#tabs a[data-view=tasks]")
            page.wait_for_selector("#view .error-text")
            errors = page.inner_text("#view")
            assert "divide" in errors and "ZeroDivisionError: division by zero" in errors
            assert page.locator("svg.timeline rect").count() >= 1
            page.screenshot(path=str(ARTIFACTS / "dashboard-tasks.png"))
        except Exception:
            page.screenshot(path=str(ARTIFACTS / "dashboard-failure.png"))
            print("browser console:\n" + "\n".join(console[-40:]))
            raise
        finally:
            release.touch()
    wait_for(lambda: json.loads(urllib_get(f"{base}api/jobs/{job}"))["status"] == "SUCCEEDED", timeout=60,
             what="the job finished after its release")
    assert not [c for c in console if c.startswith("error")], console


def urllib_post(url: str, body: dict) -> bytes:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")
    with urllib.request.urlopen(req, timeout=30) as resp:
        return resp.read()


def urllib_get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as resp:
        return resp.read()


