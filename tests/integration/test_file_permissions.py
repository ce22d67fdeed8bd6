"""What a cluster writes on disk is its user's only: every directory of the session (and the temp
root that lists sessions, the node's shared-memory directory, socket directories, spill
directories) has no group or other permission bits, nor has any file in them: the token,
cluster.json, logs, shared-memory objects, spilled objects, uploaded and unpacked packages with
their byte-code caches, a job's directory and log.

The clusters here start under a permissive umask (002), as on a shared machine's default
account, so a file made with the default mode would be group-writable and world-readable."""

from __future__ import annotations

import glob
import json
import os
import stat
import sys
import tempfile
import textwrap

import pytest

import runtime
from runtime._testing.umask import permissive_umask

pytestmark = pytest.mark.timeout(180)

MB = 1 << 20


def loose(root: str) -> list[str]:
    """root and everything under it that group or others may access (symbolic links aside)."""
    found = []
    for dirpath, dirs, files in os.walk(root):
        for path in [dirpath] + [os.path.join(dirpath, n) for n in files]:
            try:
                st = os.lstat(path)
            except FileNotFoundError:  # an object freed, a temporary file renamed meanwhile
                continue
            if not stat.S_ISLNK(st.st_mode) and st.st_mode & 0o077:
                found.append(f"{path} {stat.S_IMODE(st.st_mode):04o}")
    return found


def entries(root: str) -> list[str]:
    return [os.path.join(d, n) for d, _, files in os.walk(root) for n in files]


def mode(path: str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def make_working_dir(path) -> str:
    path.mkdir()
    (path / "helper.py").write_text("SCALE = 2\n")
    (path / "data").mkdir()
    (path / "data" / "numbers.txt").write_text("1 2 3\n")
    os.chmod(path / "helper.py", 0o664)  # as the umask left it: the cluster's copy must not be
    return str(path)


DRIVER = """
import os, sys
import numpy as np
import runtime
runtime.init(address="auto", namespace="perm", runtime_env={"working_dir": %(wd)r})

@runtime.remote
def big(i):
    import helper  # from the working_dir: Python writes its byte-code cache there
    with open("data/numbers.txt") as f:
        assert f.read().split() == ["1", "2", "3"]
    print("task", i, "ran")
    return np.full(%(n)d, float(i * helper.SCALE))

@runtime.remote
def umask_of_tasks():
    mask = os.umask(0)
    os.umask(mask)
    return mask

# 4 objects of 12 MiB from the driver and 2 from workers, in a 48 MiB store: some spill.
refs = [runtime.put(np.full(%(n)d, float(i))) for i in range(4)]
refs += [big.remote(i) for i in range(2)]
runtime.get(refs)
print("TASK UMASK", oct(runtime.get(umask_of_tasks.remote())), flush=True)
print("READY", flush=True)
sys.stdin.readline()  # the objects stay alive (in shared memory or spilled) while the test looks
"""


def test_session_files_are_private_to_the_cluster_user(cli, tmp_path):
    env = {k: v for k, v in cli.env.items() if k != "PYTHONDONTWRITEBYTECODE"}  # workers write .pyc
    cli.env = env
    wd = make_working_dir(tmp_path / "wd")
    with permissive_umask():
        cli.run("start", "--head", "--port", "0", "--num-cpus", "1", "--object-store-memory", str(48 * MB),
                "--include-dashboard", "false")
        driver = cli.start_driver(DRIVER % {"wd": wd, "n": 12 * MB // 8})
        try:
            said = []
            for line in driver.stdout:  # until the driver is ready, or exits (end of file)
                said.append(line)
                if line.strip() == "READY":
                    break
            else:
                pytest.fail(f"the driver exited ({driver.wait()}): {''.join(said)}\n{driver.stderr.read()}")
            # User code keeps the user's umask: the daemons' 077 is not handed to tasks or jobs.
            assert "TASK UMASK 0o2\n" in "".join(said), said
            job = cli.run("job", "submit", "--", sys.executable, "-c",
                          "import os, runtime; m = os.umask(0); print('job umask', oct(m)); "
                          "runtime.init(address='auto'); print('job got', runtime.get(runtime.put(7)))")
            assert "job got 7" in job.stdout and "SUCCEEDED" in job.stdout, job.stdout
            assert "job umask 0o2\n" in job.stdout, job.stdout

            root = os.path.join(cli.tmpdir, "orrery")
            with open(os.path.join(root, "current_cluster.json")) as f:
                info = json.load(f)
            session = info["session_dir"]
            shm_dirs = [n["shm_dir"] for n in info["node_dirs"]]
            sock_dirs = [n["sock_dir"] for n in info["node_dirs"]]

            # What the walk below covers is there, so that it checks something.
            spilled = entries(os.path.join(session, "spill"))
            assert spilled, "no object was spilled; the store is too large for this test"
            assert any(entries(d) for d in shm_dirs), "no object is in shared memory"
            assert glob.glob(os.path.join(session, "jobs", "*", "job.log")), "no job directory"
            assert glob.glob(os.path.join(session, "packages", "*.zip")), "no uploaded package"
            assert glob.glob(os.path.join(session, "runtime_resources", "*", "packages", "*", "helper.py"))
            assert glob.glob(os.path.join(session, "runtime_resources", "*", "packages", "*", "__pycache__",
                                          "helper.*.pyc")), "the worker wrote no byte-code cache"
            assert glob.glob(os.path.join(session, "logs", "worker-*.out")), "no worker log"
            assert any(glob.glob(os.path.join(d, "*.sock")) for d in sock_dirs)

            assert mode(root) == 0o700
            assert mode(session) == 0o700
            assert mode(os.path.join(session, "token")) == 0o600
            assert mode(os.path.join(session, "cluster.json")) == 0o600
            assert mode(os.path.join(root, "current_cluster.json")) == 0o600
            for d in shm_dirs + sock_dirs:
                assert mode(d) == 0o700, d
            for path in spilled:
                assert mode(path) == 0o600, path

            found = [e for r in [root, session, *shm_dirs, *sock_dirs] for e in loose(r)]
            assert not found, "readable or writable by others:\n" + "\n".join(sorted(set(found)))
        finally:
            driver.stdin.close()
            driver.wait(60)


def test_embedded_cluster_with_a_spilling_directory_of_the_users(tmp_path, monkeypatch):
    """init() in this process: the driver writes the shared-memory objects, the spill directory
    is the user's own (left as it is), the node's directory in it is made private."""
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    monkeypatch.setattr(tempfile, "tempdir", None)
    (tmp_path / "tmp").mkdir()
    spill_root = tmp_path / "spill"
    spill_root.mkdir(mode=0o775)
    os.chmod(spill_root, 0o775)
    import numpy as np
    with permissive_umask():
        runtime.init(num_cpus=1, object_store_memory=32 * MB,
                     _system_config={"object_spilling_directory": str(spill_root)})
        try:
            refs = [runtime.put(np.full(10 * MB // 8, float(i))) for i in range(4)]
            from runtime._core import worker_state
            cw = worker_state.current()
            session, shm_dir = cw.session_dir, cw.shm_dir
            spilled = entries(str(spill_root))
            assert spilled and entries(shm_dir)
            assert mode(spill_root) == 0o775  # the user's directory, not ours to change
            for d in glob.glob(str(spill_root / "orrery-spill-*")):
                assert mode(d) == 0o700
            found = loose(session) + loose(shm_dir) + [e for d in glob.glob(str(spill_root / "*"))
                                                        for e in loose(d)]
            assert not found, "readable or writable by others:\n" + "\n".join(found)
            assert [float(runtime.get(r)[0]) for r in refs] == [0.0, 1.0, 2.0, 3.0]  # restored from disk
        finally:
            runtime.shutdown()
