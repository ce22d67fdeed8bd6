"""Fixtures for the lab tests: a real `runtime start --head` cluster joined by the test process,
and a real Jupyter server subprocess whose extension reaches it through RUNTIME_ADDRESS.

Each test gets its own TMPDIR from the `cli` fixture (tests/conftest.py): the cluster's session
files live there, and `address="auto"` reads them.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import runtime

from .jupyter_proc import JupyterServer, free_port, start_jupyter


@dataclass
class HeadCluster:
    session: Any  # the `cli` fixture's CliSession (tests/conftest.py): its own TMPDIR and env
    address: str

    @property
    def tmpdir(self) -> str:
        return self.session.tmpdir

    @property
    def env(self) -> dict:
        return self.session.env

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.session.run(*args, check=check)


@pytest.fixture
def lab_tmp(cli: Any) -> Path:
    """Scratch dir inside the test's TMPDIR (pytest's tmp_path is fixed by the first test's TMPDIR)."""
    path = Path(cli.tmpdir) / "scratch"
    path.mkdir()
    return path


@pytest.fixture
def head_cluster(cli: Any) -> Iterator[HeadCluster]:
    """`runtime start --head --num-cpus 2`, joined by this process; the `cli` fixture stops both."""
    cli.run("start", "--head", "--port", str(free_port()), "--num-cpus", "2",
            "--object-store-memory", str(64 * 1024 * 1024))
    ctx = runtime.init(address="auto")
    yield HeadCluster(cli, ctx.address_info["address"])


def _jupyter(head_cluster: HeadCluster, lab_tmp: Path, app: str) -> Iterator[JupyterServer]:
    env = dict(head_cluster.env, RUNTIME_ADDRESS=head_cluster.address)
    server = start_jupyter(lab_tmp, env, app=app)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def lab_server(head_cluster: HeadCluster, lab_tmp: Path) -> Iterator[JupyterServer]:
    """`jupyter server` with the extension enabled and RUNTIME_ADDRESS set to the cluster."""
    yield from _jupyter(head_cluster, lab_tmp, "server")


@pytest.fixture
def lab_app(head_cluster: HeadCluster, lab_tmp: Path) -> Iterator[JupyterServer]:
    """`jupyter lab` (the frontend too), likewise."""
    yield from _jupyter(head_cluster, lab_tmp, "lab")
