"""A second host for tests: a network namespace joined to this one by a veth link.

Needs root and iproute2 (`ip netns`); `namespace()` skips the test (with the reason) otherwise.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator

HEAD_IP, NODE_IP = "10.231.7.1", "10.231.7.2"


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=30)


@contextlib.contextmanager
def namespace() -> Iterator[tuple[str, str]]:
    """(namespace name, host-side interface), removed on exit."""
    import pytest
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 (`ip netns`) to make a second host in a network namespace")
    name = f"orr-{uuid.uuid4().hex[:6]}"
    host_if, node_if = f"vh-{name[4:]}", f"vn-{name[4:]}"
    made = ip("netns", "add", name, check=False)
    if made.returncode != 0:
        pytest.skip(f"network namespaces are not allowed here: {made.stderr.strip()}")
    try:
        ip("link", "add", host_if, "type", "veth", "peer", "name", node_if)
        ip("link", "set", node_if, "netns", name)
        ip("addr", "add", f"{HEAD_IP}/24", "dev", host_if)
        ip("link", "set", host_if, "up")
        ip("netns", "exec", name, "ip", "addr", "add", f"{NODE_IP}/24", "dev", node_if)
        ip("netns", "exec", name, "ip", "link", "set", node_if, "up")
        ip("netns", "exec", name, "ip", "link", "set", "lo", "up")
        yield name, host_if
    finally:
        ip("link", "del", host_if, check=False)
        ip("netns", "del", name, check=False)
