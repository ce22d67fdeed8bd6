"""What this machine (or container) gives us: CPUs and memory under cgroup limits."""

from __future__ import annotations

import math
import os

import psutil


def cpu_limit() -> int:
    """CPUs we may use: the cgroup quota (containers, Binder) or the affinity mask, whichever is less."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:
        n = os.cpu_count() or 1
    quota = _read("/sys/fs/cgroup/cpu.max")  # cgroup v2: "max 100000" or "200000 100000"
    if quota:
        parts = quota.split()
        if len(parts) == 2 and parts[0] != "max":
            n = min(n, max(1, math.ceil(int(parts[0]) / int(parts[1]))))
    return max(1, n)


def memory_limit() -> int:
    """Bytes of memory: the cgroup limit if one is set, else the machine's total."""
    total = psutil.virtual_memory().total
    limit = _read("/sys/fs/cgroup/memory.max")
    if limit and limit.isdigit():
        return min(total, int(limit))
    return total


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""
