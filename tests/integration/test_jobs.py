"""The job server on a `runtime start --head` cluster: notebooks and scripts as batch jobs.

Notebook jobs run in a real ipykernel (nbclient) that attaches to the cluster through
RUNTIME_ADDRESS; the test reads the executed copy the job keeps."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import nbformat
import pytest

from runtime._testing.sync import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


def _notebook(path):
    nb = nbformat.v4.new_notebook()
    nb.metadata = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                   "language_info": {"name": "python", "file_extension": ".py", "mimetype": "text/x-python",
                                     "codemirror_mode": {"name": "ipython", "version": 3},
                                     "pygments_lexer": "ipython3", "nbconvert_exporter": "python"}}
    nb.cells = [
        nbformat.v4.new_markdown_cell("# A parameterised notebook"),
        nbformat.v4.new_code_cell("n = 3\nlabel = 'default'", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell("%load_ext kernel_ext"),
        nbformat.v4.new_code_cell("%%remote\nprint('remote sees', label, n)\nsq = n * n\nsq"),
        nbformat.v4.new_code_cell("if sq > 30:\n    raise ValueError(f'square too big: {sq}')\nprint('local sq', sq)"),
    ]
    nbformat.write(nb, path)
    return path


@pytest.fixture
def head(tmp_path, cli):  # tmp_path first: pytest picks its base dir before cli changes TMPDIR
    cli.run("start", "--head", "--port", "0", "--num-cpus", "2")
    return cli


def _job_id(stdout):
    return next(line.split()[1] for line in stdout.splitlines() if line.startswith("Job ") and "submitted" in line)


def test_notebook_job_with_parameters_logs_cells_and_keeps_executed_copy(head, tmp_path):
    nb = _notebook(str(tmp_path / "param.ipynb"))
    out = tmp_path / "done.ipynb"
    result = head.run("job", "submit", "--notebook", nb, "-p", "n", "4", "-p", "label", "from-cli",
                      "--output", str(out), timeout=150)
    assert "remote sees from-cli 4" in result.stdout  # the cell's output is in the job log
    assert "local sq 16" in result.stdout and "SUCCEEDED" in result.stdout
    executed = nbformat.read(str(out), as_version=4)
    params = executed.cells[1]
    assert "injected-parameters" in params.metadata.tags and "n = 4" in params.source
    remote_outputs = executed.cells[3].outputs
    assert any("remote sees from-cli 4" in o.get("text", "") for o in remote_outputs)
    assert any(o.get("data", {}).get("text/plain") == "16" for o in remote_outputs)
    logs = head.run("job", "logs", _job_id(result.stdout)).stdout
    assert "[notebook] cell 3 (In[3]):" in logs and "local sq 16" in logs


def test_failing_cell_fails_the_job_and_is_named(head, tmp_path):
    nb = _notebook(str(tmp_path / "param.ipynb"))
    out = tmp_path / "failed.ipynb"
    result = head.run("job", "submit", "--notebook", nb, "-p", "n", "7", "--output", str(out),
                      timeout=150, check=False)
    assert result.returncode == 1
    assert "FAILED: cell 4 (In[4]) failed: ValueError: square too big: 49" in result.stdout
    status = head.run("job", "status", _job_id(result.stdout)).stdout
    assert "FAILED" in status and "cell 4" in status
    executed = nbformat.read(str(out), as_version=4)
    assert executed.cells[4].outputs[-1]["output_type"] == "error"


def test_script_job_status_logs_and_stop(head, tmp_path):
    done = head.run("job", "submit", "--", sys.executable, "-c", "print('hello from a job')")
    assert "hello from a job" in done.stdout and "SUCCEEDED" in done.stdout
    marker = tmp_path / "started"
    code = f"import pathlib, time; pathlib.Path({str(marker)!r}).touch(); time.sleep(120)"
    sub = head.run("job", "submit", "--no-wait", "--", sys.executable, "-c", code)
    job_id = _job_id(sub.stdout)
    wait_for(marker.exists, timeout=30, what="the job to start")
    assert "stopped" in head.run("job", "stop", job_id).stdout
    wait_for(lambda: "STOPPED" in head.run("job", "status", job_id).stdout, timeout=30, what="STOPPED")
    listing = head.run("job", "list").stdout
    assert job_id in listing and "SUBMISSION" in listing


def test_bad_job_input_gets_clear_errors(head, tmp_path):
    missing = head.run("job", "status", "job_nope", check=False)
    assert missing.returncode != 0 and "No job 'job_nope'" in missing.stderr
    neither = head.run("job", "submit", check=False)
    assert neither.returncode == 2 and "either --notebook" in neither.stderr
    nofile = head.run("job", "submit", "--notebook", str(tmp_path / "nope.ipynb"), check=False)
    assert nofile.returncode == 2 and "No notebook at" in nofile.stderr


def test_notebook_exported_as_script_runs_under_ipython_attached_by_address(head, tmp_path):
    nb = _notebook(str(tmp_path / "param.ipynb"))
    subprocess.run([sys.executable, "-m", "jupyter", "nbconvert", "--to", "script", nb, "--output-dir", str(tmp_path)],
                   check=True, capture_output=True, timeout=120)
    script = tmp_path / "param.py"
    assert "run_cell_magic('remote'" in script.read_text()
    info = json.load(open(os.path.join(head.tmpdir, "orrery", "current_cluster.json")))
    env = {**head.env, "RUNTIME_ADDRESS": info["gcs_address"].removeprefix("tcp:")}
    ran = subprocess.run([sys.executable, "-m", "IPython", str(script)], env=env, capture_output=True, text=True,
                         timeout=120, cwd=str(tmp_path))
    assert ran.returncode == 0, ran.stderr
    assert "remote sees default 3" in ran.stdout and "local sq 9" in ran.stdout
