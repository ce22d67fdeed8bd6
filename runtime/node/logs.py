"""A node's log files, read for the state API (`runtime logs`, `/api/v0/logs`): the files in its
session directory's logs/, by plain name only, so that no request reads outside it."""

from __future__ import annotations

import fnmatch
import os
import re

from ..worker.output import TASK_MARKER

_PLAIN_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,255}$")
MAX_READ = 8 * 2**20  # bytes one answer carries; a longer log is read on from its offset


def category(name: str) -> str:
    """Ray's groups for `ray logs`: worker_out, worker_err, gcs_server, raylet, dashboard, ..."""
    if name.startswith("worker-"):
        return "worker_out" if name.endswith(".out") else "worker_err" if name.endswith(".err") else "worker"
    if name.startswith("gcs"):
        return "gcs_server"
    if name.startswith("node"):
        return "raylet"  # Ray's name for its node manager
    if name.startswith(("dashboard", "monitor")):
        return name.split(".")[0]
    return "misc"


def list_logs(log_dir: str, glob: str = "*") -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    try:
        names = sorted(os.listdir(log_dir))
    except OSError:
        return out
    for name in names:
        if fnmatch.fnmatch(name, glob or "*") and os.path.isfile(os.path.join(log_dir, name)):
            out.setdefault(category(name), []).append(name)
    return out


def read_log(log_dir: str, filename: str, lines: int | None = None, offset: int | None = None,
             task_id: str | None = None) -> dict:
    """`lines` last lines of a log (all when None), or what follows byte `offset` (to follow
    it); `task_id`: only the lines of that task in a worker's file. Raises ValueError for a
    name that is not a plain file name, FileNotFoundError for one not there."""
    if not _PLAIN_NAME.match(filename or "") or filename.startswith("."):
        raise ValueError(f"{filename!r} is not a log file name: plain names of files in logs/ only "
                         "(see `runtime logs` for the list).")
    path = os.path.join(log_dir, filename)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No log file {filename!r} on this node; `runtime logs` lists them.")
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        if offset is not None:
            f.seek(min(offset, size))
            data = f.read(MAX_READ)
            return {"text": data.decode(errors="replace"), "offset": f.tell(), "size": size}
        f.seek(max(0, size - MAX_READ))
        text = f.read().decode(errors="replace")
    rows = text.splitlines()
    if task_id is not None:
        rows = task_lines(rows, task_id)
    elif filename.startswith("worker-"):
        rows = [r for r in rows if not r.startswith(TASK_MARKER)]
    if lines is not None and lines >= 0:
        rows = rows[-lines:] if lines else []
    return {"text": "".join(r + "\n" for r in rows), "offset": size, "size": size}


def task_lines(rows: list[str], task_id: str) -> list[str]:
    """The lines after each `:task_id:<task_id>` marker, up to the next marker."""
    out, mine = [], False
    for r in rows:
        if r.startswith(TASK_MARKER):
            mine = r[len(TASK_MARKER):].strip() == task_id
        elif mine:
            out.append(r)
    return out
