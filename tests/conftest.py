"""Test configuration: the runtime's fixtures come from its shipped plugin.

`runtime._testing.pytest_plugin` provides the autouse leak check
(`orrery_leak_check`) and the `ray_start` / `shared_runtime` cluster fixtures.
The `cli` fixtures here run `python -m runtime ...` with a TMPDIR of their own, so the
session file that `address="auto"` reads is isolated from other clusters on the machine.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from dataclasses import dataclass

import pytest

import runtime

pytest_plugins = ["runtime._testing.pytest_plugin"]


@dataclass
class CliSession:
    tmpdir: str
    env: dict

    def run(self, *args: str, timeout: float = 60, check: bool = True):
        result = subprocess.run(
            [sys.executable, "-m", "runtime", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check:
            assert result.returncode == 0, (
                f"`runtime {' '.join(args)}` exited {result.returncode}\n"
                f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
            )
        return result

    def driver(self, script: str, timeout: float = 60):
        result = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(script)],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert result.returncode == 0, (
            f"driver subprocess exited {result.returncode}\n"
            f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
        )
        return result.stdout

    def start_driver(self, script: str):
        return subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(script)],
            env=self.env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )


@pytest.fixture(scope="session", autouse=True)
def _basetemp_before_any_tmpdir_change(tmp_path_factory):
    """pytest makes its tmp_path root under TMPDIR on first use; the `cli` fixtures point TMPDIR
    at a directory they delete, so the root is made here first, whatever order a test asks for
    `cli` and `tmp_path` in."""
    tmp_path_factory.getbasetemp()


def _cli_session(tmpdir, monkeypatch):
    monkeypatch.setenv("TMPDIR", tmpdir)
    monkeypatch.setattr(tempfile, "tempdir", None)  # gettempdir() caches
    session = CliSession(tmpdir=tmpdir, env=dict(os.environ))
    try:
        yield session
    finally:
        if runtime.is_initialized():
            runtime.shutdown()
        session.run("stop", check=False)


@pytest.fixture
def cli(monkeypatch, orrery_leak_check):
    tmpdir = tempfile.mkdtemp(prefix="orr-", dir="/tmp")
    try:
        yield from _cli_session(tmpdir, monkeypatch)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


@pytest.fixture
def long_tmpdir_cli(tmp_path, monkeypatch, orrery_leak_check):
    tmpdir = tmp_path / "a-temporary-directory-with-a-rather-long-name"
    tmpdir.mkdir()
    yield from _cli_session(str(tmpdir), monkeypatch)




@pytest.fixture
def make_cluster(own_cluster):
    """make_cluster(head={"num_cpus": 1}, workers=[{"num_cpus": 2}, ...], **system_config): a
    multi-node cluster on this machine (runtime.cluster_utils.Cluster) with this process
    connected as its driver; shut down after the test."""
    import runtime
    from runtime.cluster_utils import Cluster

    made = []

    def make(head=None, workers=(), **system_config):
        c = Cluster(initialize_head=True, head_node_args=head or {"num_cpus": 1},
                    _system_config=system_config or None, shutdown_at_exit=False)
        made.append(c)
        for args in workers:
            c.add_node(**args)
        runtime.init(address=c.address)
        return c

    yield make
    runtime.shutdown()
    for c in made:
        c.shutdown()


@pytest.fixture
def netns():
    """(namespace name, host-side interface): a second host as far as TCP goes. It reaches this
    one at netns.HEAD_IP and is netns.NODE_IP itself. Skipped (with the reason) without root."""
    from runtime._testing import netns as ns
    with ns.namespace() as made:
        yield made
