"""Progress of a dataset being consumed: blocks done / total, rows, elapsed time.

Shown only once the work has taken longer than `DataContext.progress_bar_min_seconds`
(default 1 s), so quick calls (and tests) stay quiet; `DataContext.enable_progress_bars =
False` (Ray's name) turns it off. In a notebook kernel with ipywidgets it is a progress bar
under the cell; elsewhere, or with `KERNEL_EXT_NONINTERACTIVE=1` (batch runs of notebooks),
it is plain text on stderr, at most one line a second plus a final line:

    Running Read -> MapBatches(f): 12/40 blocks, 1.2M rows, 3.1 s
    Done Read -> MapBatches(f): 40/40 blocks, 4.0M rows, 9.8 s

It is updated as blocks come out of the stream (it has no thread of its own).
"""

from __future__ import annotations

import os
import sys
import time

from .context import DataContext

TEXT_INTERVAL_S = 1.0  # at most one text line a second
WIDGET_INTERVAL_S = 0.1  # widget updates are cheap but not free


def interactive() -> bool:
    """A kernel with a frontend that can show widgets (not a terminal, not a batch run)."""
    if os.environ.get("KERNEL_EXT_NONINTERACTIVE", "") not in ("", "0"):
        return False
    ipython = sys.modules.get("IPython")  # never import IPython just to find out
    if ipython is None:
        return False
    shell = ipython.get_ipython()
    if shell is None or getattr(shell, "kernel", None) is None:
        return False
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        return False
    return True


def _count(n: int) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


class Progress:
    """One consumption of a dataset: `update(blocks, rows)` per block, `close()` at the end."""

    def __init__(self, name: str, total_blocks: int | None, *, enabled: bool, min_seconds: float) -> None:
        self.name, self.total = name, total_blocks
        self.enabled, self.min_seconds = enabled, min_seconds
        self.started = time.perf_counter()
        self.blocks = self.rows = 0
        self._view: _Text | _Widget | None = None
        self._last = 0.0

    def update(self, blocks: int, rows: int) -> None:
        self.blocks, self.rows = blocks, rows
        if not self.enabled:
            return
        now = time.perf_counter()
        if self._view is None:
            if now - self.started < self.min_seconds:
                return
            self._view = _Widget(self) if interactive() else _Text(self)
        elif now - self._last < self._view.interval:
            return
        self._last = now
        self._view.show(done=False)

    def close(self) -> None:
        """The final state, if anything was shown."""
        if self._view is not None:
            self._view.show(done=True)
            self._view = None

    def line(self, done: bool) -> str:
        total = self.total if self.total is not None else "?"
        stopped = done and self.total is not None and self.blocks < self.total  # e.g. take(5) stopped early
        state = "Stopped" if stopped else "Done" if done else "Running"
        elapsed = time.perf_counter() - self.started
        return f"{state} {self.name}: {self.blocks}/{total} blocks, {_count(self.rows)} rows, {elapsed:.1f} s"


class _Text:
    interval = TEXT_INTERVAL_S

    def __init__(self, progress: Progress) -> None:
        self.p = progress

    def show(self, done: bool) -> None:
        print(self.p.line(done), file=sys.stderr, flush=True)


class _Widget:
    interval = WIDGET_INTERVAL_S

    def __init__(self, progress: Progress) -> None:
        import ipywidgets as w
        from IPython.display import display
        self.p = progress
        self.bar = w.IntProgress(min=0, max=max(1, progress.total or 1), description="Dataset")
        self.label = w.Label()
        display(w.HBox([self.bar, self.label]))

    def show(self, done: bool) -> None:
        if self.p.total is None:  # unknown total: always one more to go until done
            self.bar.max = max(1, self.p.blocks + (0 if done else 1))
        self.bar.value = min(self.p.blocks, self.bar.max)
        if done:
            self.bar.bar_style = "success" if self.p.total in (None, self.p.blocks) else "warning"
        self.label.value = self.p.line(done)


def start(name: str, total_blocks: int | None) -> Progress:
    """A progress view for one stream, with the current DataContext's settings."""
    ctx = DataContext.get_current()
    return Progress(name, total_blocks, enabled=ctx.enable_progress_bars, min_seconds=ctx.progress_bar_min_seconds)
