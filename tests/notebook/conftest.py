"""Fixtures for the notebook tests: `ip`, a real IPython shell with `kernel_ext` loaded, on the
shared embedded cluster (this test process is the driver)."""

from __future__ import annotations

import pytest
from IPython.core.interactiveshell import InteractiveShell


@pytest.fixture
def ip(shared_runtime):
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "kernel_ext")
    yield shell
    shell.reset()
