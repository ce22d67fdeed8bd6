"""`%%remote --spread N`: the cell runs as N tasks spread over the cluster's nodes.

Each copy sees `worker_index` (0..N-1) and `num_workers`. Output lines are prefixed
`[worker i]`. The cell's value is the list of the N values; each name the cell assigns comes
back as the list of its N values. Failures are grouped by error ("3 × ValueError on workers
0, 2, 3: ..."), and the cell raises `SpreadError` after every copy has ended.
"""

from __future__ import annotations

import collections
import os
import queue
import sys
import time
from typing import Any

import runtime
from runtime.worker.output import write_stream
from runtime.exceptions import TaskCancelledError, TaskError, WorkerCrashedError

from .output_router import DONE, router
from .remote_magic import plain_error, render_remote_traceback, worker_crash_text


class SpreadError(Exception):
    """Some copies of a `--spread` cell failed; the message groups them by error. Shown with the
    remote traceback of the first worker of each group, at the cell's lines, and none of ours."""

    def __init__(self, message: str, tracebacks: list[list[str]] | None = None) -> None:
        super().__init__(message)
        self.tracebacks = tracebacks or []

    def _render_traceback_(self) -> list[str]:
        lines = [f"SpreadError: {self}"]
        for tb in self.tracebacks:
            lines.extend(["", *tb])
        return lines


def run_spread(cell: Any, n: int, task: Any) -> Any:
    opts = {**cell.options, "scheduling_strategy": "SPREAD"}
    names = [f"{cell.label} [worker {i}]" for i in range(n)]
    for name in names:
        router().expect(name)
    refs = [task.options(name=names[i], **opts).remote(
        cell.code.source, cell.filename, cell.first_line, {**cell.namespace, "worker_index": i, "num_workers": n},
        cell.pull, cell.code.last_expr, cell.max_bytes) for i in range(n)]
    q = router().open_many(refs, names)
    try:
        _follow(cell, refs, q)
    finally:
        for ref in refs:
            router().close(ref)
    return _gather(cell, refs)


def _follow(cell: Any, refs: list, q: queue.Queue) -> None:
    pending = set(range(len(refs)))
    mid_line: set[tuple] = set()
    started = time.monotonic()
    last_progress = 0.0
    progress = _ProgressLine(cell.label, len(refs))
    try:
        while pending:
            try:
                i, item = q.get(timeout=0.5)
            except queue.Empty:
                now = time.monotonic()
                if now - started >= 2.0 and now - last_progress >= 5.0:  # a progress line for long cells
                    last_progress = now
                    progress.show(len(refs) - len(pending))
                continue
            if item is DONE:
                pending.discard(i)
                continue
            write_stream(item["s"], _prefix(i, item, mid_line))
    except KeyboardInterrupt:
        for ref in refs:
            runtime.cancel(ref, recursive=True)
        raise plain_error(KeyboardInterrupt(f"{cell.label} was interrupted; its {len(refs)} tasks were "
                                            "cancelled.")) from None
    finally:
        progress.close()


class _ProgressLine:
    """"[cell In[n]] k/N workers done" while a long --spread cell runs. In a kernel it is one
    display updated in place and emptied when the cell ends (it must not stay above the
    result); elsewhere (a terminal, a batch run's log) a line on stderr now and then."""

    def __init__(self, label: str, total: int) -> None:
        self.label, self.total = label, total
        self.handle: Any = None
        self.in_kernel = hasattr(sys.stdout, "set_thread_parent") and not os.environ.get("KERNEL_EXT_NONINTERACTIVE")

    def show(self, done: int) -> None:
        text = f"[{self.label}] {done}/{self.total} workers done"
        if not self.in_kernel:
            print(text, file=sys.stderr)
        elif self.handle is None:
            from IPython.display import display
            self.handle = display({"text/plain": text}, raw=True, display_id=True)
        else:
            self.handle.update({"text/plain": text}, raw=True)

    def close(self) -> None:
        if self.handle is not None:
            self.handle.update({"text/plain": ""}, raw=True)


def _prefix(i: int, msg: dict, mid_line: set) -> str:
    out = []
    key = (i, msg["s"])
    for piece in msg["d"].splitlines(keepends=True):
        if key not in mid_line:
            out.append(f"[worker {i}] ")
        out.append(piece)
        (mid_line.discard if piece.endswith("\n") else mid_line.add)(key)
    return "".join(out)


def _gather(cell: Any, refs: list) -> Any:
    results: list[Any] = []
    failures: dict[tuple, list[int]] = collections.defaultdict(list)
    shown: dict[tuple, list[str]] = {}  # the first worker's traceback of each kind of failure
    for i, ref in enumerate(refs):
        try:
            results.append(runtime.get(ref))
            continue
        except TaskCancelledError:
            key, tb = ("TaskCancelledError", "cancelled"), None
        except WorkerCrashedError as e:
            key, tb = ("WorkerCrashedError", "the worker died"), [worker_crash_text(f"worker {i}", e, cell.args.retries)]
        except TaskError as e:
            cause = e.cause if e.cause is not None else e
            key = (type(cause).__name__, (str(cause).strip().splitlines() or [""])[0])
            tb = render_remote_traceback(e, cell.filename, cell.count, f"{cell.label} [worker {i}]")
        failures[key].append(i)
        if tb is not None:
            shown.setdefault(key, tb)
        results.append(None)
    if failures:
        ordered = sorted(failures.items(), key=lambda kv: -len(kv[1]))
        groups = [f"{len(idx)} × {kind} on worker{'s' if len(idx) > 1 else ''} {', '.join(map(str, idx))}: {msg}"
                  for (kind, msg), idx in ordered]
        ok = len(refs) - sum(len(v) for v in failures.values())
        raise SpreadError(f"{cell.label}: {ok} of {len(refs)} workers succeeded; " + "; ".join(groups),
                          [shown[k] for k, _ in ordered if k in shown])
    names: dict[str, list] = {}
    for r in results:
        for name, shipped in r["names"].items():
            names.setdefault(name, []).append(cell._unship(name, shipped))
    for name, values in names.items():
        cell.shell.user_ns[name] = values
    if cell.code.last_expr:
        return [cell._unship("the result", r["value"]) for r in results]
    return None
