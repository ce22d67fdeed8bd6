"""`%%remote --async --as NAME` in a real ipykernel, run by nbclient: the handle is an ObjectRef
of the cell's value (`runtime.get` and `await` give it), the names the cell assigned land in
the notebook when it finishes, and a module the cell imports does not shadow the notebook's."""

from __future__ import annotations

import nbformat
import pytest
from nbclient import NotebookClient

pytestmark = [pytest.mark.timeout(180), pytest.mark.slow]

CELLS = [
    "%load_ext kernel_ext\n%cluster start --num-cpus 2",
    "time = \"the notebook's time\"",
    "%%remote --async --as fut\nimport time\nz = 3\ntime.sleep(0.2)\nz + 4",
    "import runtime\nprint('get:', runtime.get(fut, timeout=60))",
    "print('await:', await fut)",
    "from runtime._testing.sync import wait_for\n"
    "wait_for(lambda: 'z' in globals(), timeout=30, what='the async cell binds z')\n"
    "print('names:', z, time)",
    "%cluster stop",
]


def test_async_handle_gives_the_cells_value_and_binds_its_names(orrery_leak_check, tmp_path):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in CELLS])
    NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    text = [''.join(o.get("text", "") for o in c.outputs) for c in nb.cells]
    assert text[3] == "get: 7\n"
    assert text[4] == "await: 7\n"
    assert text[5] == "names: 3 the notebook's time\n"
