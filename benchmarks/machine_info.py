"""Describe the machine a benchmark ran on, so results files say where they came from."""

from __future__ import annotations

import os
import platform


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_machine() -> dict:
    import psutil  # imported here so that compare.py needs only the standard library

    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def machine_line(machine: dict) -> str:
    """One line for humans, e.g. for the header of a comparison table."""
    return (
        f"{machine.get('cpu_count')} CPUs ({machine.get('cpu_model')}), "
        f"{machine.get('memory_gib')} GiB RAM, Python {machine.get('python')}, "
        f"{machine.get('platform')}"
    )
