"""A headless Chromium page for the browser tests (Debian's chromium through playwright:
playwright cannot download browsers here); installed with apt when we are root."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from runtime._testing.debian import require_debian_program

CHROMIUM = "/usr/bin/chromium"
UI_TIMEOUT_MS = 60_000


def chromium() -> str:
    return require_debian_program("chromium", "chromium", (CHROMIUM,), recommends=True)


@contextlib.contextmanager
def chromium_page(sync_api: Any) -> Iterator[tuple[Any, list[str]]]:
    """(page, console messages) of a fresh headless browser, closed on exit."""
    executable = chromium()
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.set_default_timeout(UI_TIMEOUT_MS)
            console: list[str] = []
            page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
            yield page, console
        finally:
            browser.close()
