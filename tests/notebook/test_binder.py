"""Binder's install steps, replayed in a fresh virtualenv: `pip install -r binder/requirements.txt`
from the repository root, then `binder/postBuild`, then the demo notebooks run top to bottom in
that environment's own kernel (and a notebook that never loads the extension can use it)."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import nbformat
import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def binder_env(tmp_path_factory):
    root = tmp_path_factory.mktemp("binder")
    venv = root / "venv"
    home = root / "home"
    home.mkdir()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    env = {**os.environ, "HOME": str(home), "IPYTHONDIR": str(home / ".ipython"),
           "PATH": f"{venv / 'bin'}:{os.environ['PATH']}", "VIRTUAL_ENV": str(venv),
           "JUPYTER_CONFIG_DIR": str(home / ".jupyter"), "JUPYTER_DATA_DIR": str(home / ".local/share/jupyter")}
    env.pop("PYTHONPATH", None)
    pip = subprocess.run([str(venv / "bin/pip"), "install", "--quiet", "-r", "binder/requirements.txt"], cwd=REPO,
                         env=env, capture_output=True, text=True, timeout=800)
    assert pip.returncode == 0, pip.stderr[-3000:]
    post = subprocess.run(["bash", str(REPO / "binder/postBuild")], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)
    assert post.returncode == 0, post.stderr
    return venv, env, root


def run_notebook(binder_env, path: pathlib.Path) -> nbformat.NotebookNode:
    venv, env, root = binder_env
    out = root / f"executed-{path.name}"
    done = subprocess.run([str(venv / "bin/python"), "-m", "runtime.jobs.notebook", str(path), str(out)],
                          cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    return nbformat.read(str(out), as_version=4)


def test_installed_package_is_the_venvs_own(binder_env):
    venv, env, _ = binder_env
    where = subprocess.run([str(venv / "bin/python"), "-c", "import runtime, kernel_ext; print(runtime.__file__)"],
                           env=env, capture_output=True, text=True, timeout=60, cwd="/")
    assert where.returncode == 0, where.stderr
    assert str(venv) in where.stdout  # a real install, not this checkout


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "notebooks").glob("*.ipynb")))
def test_demo_notebook_runs_in_the_binder_environment(binder_env, name):
    nb = run_notebook(binder_env, REPO / "notebooks" / name)
    assert not any(o.get("output_type") == "error" for c in nb.cells for o in c.get("outputs", []))


def test_extension_is_loaded_without_load_ext(binder_env, tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("%cluster status"), nbformat.v4.new_code_cell("%remote 6 * 7")]
    path = tmp_path / "no-load-ext.ipynb"
    nbformat.write(nb, str(path))
    done = run_notebook(binder_env, path)
    assert "Cluster: 1 node(s)" in done.cells[0].outputs[0]["text"]
    assert done.cells[1].outputs[-1]["data"]["text/plain"] == "42"
