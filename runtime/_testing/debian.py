"""Debian's programs that tests start for real (redis-server, prometheus, chromium): found on
the machine, or installed with apt when we are root, or the test is skipped saying what to install."""

from __future__ import annotations

import os
import shutil
import subprocess


def debian_program(name: str, package: str, paths: tuple[str, ...] = (), recommends: bool = False) -> str | None:
    """The executable `name` (on PATH or at one of `paths`); installs `package` first when it is
    missing and apt may be used (`recommends`: with its recommended packages, fonts for a
    browser). None when it is still not there."""
    exe = _find(name, paths)
    if exe is None and hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = ["apt-get", "install", "-y", *([] if recommends else ["--no-install-recommends"]), package]
        if subprocess.run(install, env=env, capture_output=True, timeout=600, check=False).returncode != 0:
            # The package lists may be missing on a fresh machine.
            subprocess.run(["apt-get", "update"], env=env, capture_output=True, timeout=600, check=False)
            subprocess.run(install, env=env, capture_output=True, timeout=600, check=False)
        exe = _find(name, paths)
    return exe


def require_debian_program(name: str, package: str, paths: tuple[str, ...] = (), recommends: bool = False) -> str:
    """For a test: the executable, or skip saying which package to install."""
    exe = debian_program(name, package, paths, recommends)
    if exe is None:
        import pytest
        pytest.skip(f"{name} not found and could not be installed (Debian: apt-get install {package})")
    return exe


def _find(name: str, paths: tuple[str, ...]) -> str | None:
    return shutil.which(name) or next((p for p in paths if os.access(p, os.X_OK)), None)
