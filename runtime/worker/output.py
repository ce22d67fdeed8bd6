"""Task output goes to the task's owner, as Ray's `log_to_driver` does.

While a task runs, what it writes to `sys.stdout` / `sys.stderr` (from any thread it
started, or from its coroutines) is sent to the process that submitted it, tagged with
the task id; that process prints it with a `(name pid=N)` prefix, or hands it to an
output handler (the notebook extension routes it into the cell that started the task).
Output of tasks a task submitted reaches its owner this way too, so it travels up to
the driver. Outside tasks, writes go to the node manager's log as before.

Task output is also kept in the worker's own files, `logs/worker-<worker id>.out` and `.err`
in the node's session directory, as Ray keeps `worker-*.out`: before the lines of a task
that differs from the file's previous lines comes a marker line `:task_id:<hex>` (Ray writes
`:task_name:`), so `runtime logs task --id` can pick one task's lines out of its worker's file.
"""

from __future__ import annotations

import contextvars
import io
import os
import sys
import threading
from contextlib import contextmanager
from typing import Any, Iterator

from .._core.private_files import open_private

# (send function, task id, task name) of the task running in this thread or coroutine.
_sink: contextvars.ContextVar[tuple | None] = contextvars.ContextVar("task_output_sink", default=None)
_running: dict[bytes, tuple] = {}  # task id -> sink, to forward children's output (see forward_child)
TASK_MARKER = ":task_id:"


class _WorkerLog:
    """This worker's .out and .err files, opened on the first task output."""

    def __init__(self) -> None:
        self.base: str | None = None
        self.files: dict[int, Any] = {}
        self.last_task: dict[int, bytes] = {}
        self.lock = threading.Lock()

    def write(self, stream_no: int, task_id: bytes, text: str) -> None:
        if self.base is None:
            return
        with self.lock:
            f = self.files.get(stream_no)
            if f is None:
                f = self.files[stream_no] = open_private(f"{self.base}.{'out' if stream_no == 1 else 'err'}", "a",
                                                         buffering=1, encoding="utf-8", errors="replace")
            if self.last_task.get(stream_no) != task_id:
                self.last_task[stream_no] = task_id
                f.write(f"{TASK_MARKER}{task_id.hex()}\n")
            f.write(text if text.endswith("\n") else text + "\n")


_log = _WorkerLog()


class _ForwardingStream(io.TextIOBase):
    """Line-buffered per task: `print(a, b)` is four writes, but the owner gets one message per
    line (or per flush), so a notebook shows one stream output, not fragments."""

    _MAX_PENDING = 8192

    def __init__(self, stream_no: int, fallback: Any) -> None:
        self.stream_no = stream_no
        self.fallback = fallback
        self._pending: dict[bytes, str] = {}  # task id -> text after the last newline
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        sink = _sink.get()
        if sink is None or not text:
            return self.fallback.write(text)
        with self._lock:
            text = self._pending.pop(sink[1], "") + text
            cut = text.rfind("\n") + 1
            if cut == 0 and len(text) < self._MAX_PENDING:
                self._pending[sink[1]] = text
                return len(text)
            if 0 < cut < len(text):
                self._pending[sink[1]] = text[cut:]
                text = text[:cut]
        _send(sink, self.stream_no, text)
        return len(text)

    def flush(self) -> None:
        sink = _sink.get()
        if sink is not None:
            with self._lock:
                text = self._pending.pop(sink[1], "")
            if text:
                _send(sink, self.stream_no, text)
        self.fallback.flush()

    def fileno(self) -> int:
        return self.fallback.fileno()

    def isatty(self) -> bool:
        return False

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.fallback, "encoding", "utf-8")


def _send(sink: tuple, stream_no: int, text: str, prefixed: bool = False) -> None:
    send, task_id, name = sink
    if not prefixed:
        try:
            _log.write(stream_no, task_id, text)
        except OSError:  # a full disk loses the copy on file, not the output itself
            pass
    msg = {"op": "task_output", "t": task_id, "n": name, "pid": os.getpid(), "s": stream_no, "d": text}
    if prefixed:  # a child's lines, already tagged with the child's name and pid
        msg["p"] = True
    try:
        send(msg)
    except Exception:  # noqa: BLE001 - the owner is gone: output has nowhere to go
        pass


def install(log_base: str | None = None) -> None:
    """Replace sys.stdout/sys.stderr of this worker process with forwarding streams; task output
    is also appended to `log_base`.out / .err."""
    _log.base = log_base
    if not isinstance(sys.stdout, _ForwardingStream):
        sys.stdout = _ForwardingStream(1, sys.stdout)
        sys.stderr = _ForwardingStream(2, sys.stderr)


@contextmanager
def captured(send: Any, task_id: bytes, name: str) -> Iterator[None]:
    """Send this thread's (or coroutine's) output to the task's owner while the block runs."""
    sink = (send, task_id, name)
    token = _sink.set(sink)
    _running[task_id] = sink
    try:
        yield
    finally:
        for s in (sys.stdout, sys.stderr):  # before the sink goes: sends a last partial line
            try:
                s.flush()
            except Exception:  # noqa: BLE001
                pass
        _running.pop(task_id, None)
        _sink.reset(token)


def forward_child(parent_task_id: bytes | None, stream_no: int, text: str) -> bool:
    """Pass output of a child task on to the owner of the running parent. False if none."""
    sink = _running.get(parent_task_id) if parent_task_id else None
    if sink is None:
        return False
    _send(sink, stream_no, text, prefixed=True)
    return True


def write_stream(stream_no: int, text: str) -> None:
    """Write task output to this process's stdout (1) or stderr (2). A stream that batches by
    itself (ipykernel's, which sends what was written every 0.2 s) is not flushed: a flush per
    line of a busy task sends a message per line, past the IOPub rate limit, and lines are lost."""
    stream = sys.stdout if stream_no == 1 else sys.stderr
    stream.write(text)
    if not hasattr(stream, "set_thread_parent"):
        stream.flush()


def in_context(spec: Any, fn: Any, *args: Any) -> Any:
    """fn(*args) in the contextvars of whoever submitted `spec` (TaskSpec.context), so output and
    warnings about a task land in the notebook cell that submitted it."""
    ctx = getattr(spec, "context", None)
    return fn(*args) if ctx is None else ctx.copy().run(fn, *args)


class LinePrefixer:
    """Prefixes each line of a task's output with `(name pid=N) `, across partial writes."""

    def __init__(self) -> None:
        self._mid_line: set[tuple] = set()

    def __call__(self, msg: dict) -> str:
        if msg.get("p"):
            return msg["d"]
        key = (msg["t"], msg["s"])
        prefix = f"({msg['n']} pid={msg['pid']}) "
        out = []
        for piece in msg["d"].splitlines(keepends=True):
            if key not in self._mid_line:
                out.append(prefix)
            out.append(piece)
            if piece.endswith("\n"):
                self._mid_line.discard(key)
            else:
                self._mid_line.add(key)
        return "".join(out)
