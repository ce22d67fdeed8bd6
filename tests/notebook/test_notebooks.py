"""The demo notebooks, executed top to bottom by nbclient in a real ipykernel (each kernel starts
and stops its own embedded cluster), with the batch-mode text views."""

from __future__ import annotations

import os
import pathlib

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = pathlib.Path(__file__).resolve().parents[2] / "notebooks"
NAMES = sorted(p.name for p in NOTEBOOKS.glob("*.ipynb"))


def execute(name: str, tmp_path) -> nbformat.NotebookNode:
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    env_before = os.environ.get("KERNEL_EXT_NONINTERACTIVE")
    os.environ["KERNEL_EXT_NONINTERACTIVE"] = "1"  # the kernel inherits it
    try:
        NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    finally:
        if env_before is None:
            os.environ.pop("KERNEL_EXT_NONINTERACTIVE", None)
        else:
            os.environ["KERNEL_EXT_NONINTERACTIVE"] = env_before
    return nb


def executed_text(name: str, tmp_path) -> str:
    """Run the notebook; the text of all its code cells' outputs."""
    nb = execute(name, tmp_path)
    return "\n".join(text_of(c) for c in nb.cells if c.cell_type == "code")


def text_of(cell) -> str:
    parts = []
    for out in cell.get("outputs", []):
        parts.append(out.get("text", "") or out.get("data", {}).get("text/plain", ""))
    return "".join(parts)


def test_the_demo_notebooks_are_all_there():
    assert {"01-tour.ipynb", "02-actors-and-state.ipynb", "03-resources-and-placement.ipynb",
            "04-datasets-and-dask.ipynb"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_notebook_is_stored_without_outputs(name):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{name}: strip outputs before committing"


@pytest.mark.slow
def test_tour_runs_with_the_books_results(tmp_path):
    out = executed_text("01-tour.ipynb", tmp_path)
    assert "[3, 3, 3, 3]" in out  # the Counter actors
    assert "[1, 2]\n[1]" in out  # stored objects are immutable
    assert "[1000, 1000, 1000]" in out and "[0, 1, 2, 3, 4, 5]" in out  # put, and the flaky function's retries
    assert "summing on pid" in out and "total came back: 285" in out  # %%remote streamed, then pulled `total`
    assert "big stays in the cluster" in out and "ObjectRef [1.0, 1.0, 1.0]" in out
    assert "squares: 12/12 done (finished)" in out  # progress, as text in batch mode
    assert "Tasks:" in out and "Placement groups:" in out  # %cluster, as text in batch mode


@pytest.mark.slow
def test_actors_notebook_runs(tmp_path):
    out = executed_text("02-actors-and-state.ipynb", tmp_path)
    assert "1\n2\n3" in out and "21" in out
    assert "after restart: 1" in out and "ActorDiedError - Actor" in out


@pytest.mark.slow
def test_resources_notebook_runs(tmp_path):
    out = executed_text("03-resources-and-placement.ipynb", tmp_path)
    assert "still pending: 1" in out and "cancelled" in out
    assert "requires {CPU: 1, TPU: 1}, but the cluster's only node does not have {TPU: 1}" in out
    assert "hello from a half-CPU cell" in out and "{'CPU': 0.5}" in out
    assert "CREATED - CPUs left outside the group: 0" in out and "CPU_group_1_" in out  # placement groups
    assert "in bundle 0 of pair" in out and "STRICT_SPREAD needs 2 nodes" in out and "CPUs free again: 2.0" in out


@pytest.mark.slow
def test_datasets_and_dask_notebook_runs(tmp_path):
    out = executed_text("04-datasets-and-dask.ipynb", tmp_path)
    assert "rows: 200000" in out and "miles: double" in out  # read_parquet, schema
    assert "per_mile" in out  # map_batches added the column
    assert out.count("same as pandas: True") == 2  # the Dataset groupby and the Dask one
    assert "longest match pandas: True" in out  # sort
    assert "long trips match pandas: True" in out and "partitions: 4" in out  # to_dask / from_dask
