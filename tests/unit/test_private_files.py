"""runtime/_core/private_files.py: modes set whatever the umask, existing loose ones
tightened, secrets with loose modes refused."""

from __future__ import annotations

import os
import stat

import pytest

from runtime._testing.umask import permissive_umask


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_private_files_helpers_under_a_permissive_umask(tmp_path):
    """runtime/_core/private_files.py, whose functions the launcher and daemons use: modes are
    set whatever the umask, existing loose ones are tightened, secrets with loose modes refused."""
    from runtime._core import private_files as pf
    with permissive_umask():
        os.chmod(tmp_path, 0o755)
        made = pf.make_private_dir(str(tmp_path / "a" / "b"), parents=True)
        assert mode(tmp_path / "a") == mode(made) == 0o700
        assert mode(tmp_path) == 0o755  # a parent that exists is left as it is
        loose_dir = tmp_path / "loose"
        loose_dir.mkdir()
        os.chmod(loose_dir, 0o755)
        pf.make_private_dir(str(loose_dir))
        assert mode(loose_dir) == 0o700

        pf.write_private_file(str(tmp_path / "secret"), "s3cret")
        assert mode(tmp_path / "secret") == 0o600 and (tmp_path / "secret").read_text() == "s3cret"
        (tmp_path / "log").write_text("old\n")
        os.chmod(tmp_path / "log", 0o664)
        with pf.open_private(str(tmp_path / "log"), "a") as f:
            f.write("new\n")
        assert mode(tmp_path / "log") == 0o600 and (tmp_path / "log").read_text() == "old\nnew\n"
        pf.copy_private(str(tmp_path / "log"), str(tmp_path / "copy"))
        assert mode(tmp_path / "copy") == 0o600 and (tmp_path / "copy").read_text() == "old\nnew\n"

        tree = tmp_path / "tree"
        (tree / "pkg").mkdir(parents=True)
        (tree / "pkg" / "m.py").write_text("")
        (tree / "run.sh").write_text("#!/bin/sh\n")
        os.chmod(tree / "run.sh", 0o775)
        pf.make_pycache_dirs(str(tree))
        pf.make_tree_private(str(tree))
        assert mode(tree / "run.sh") == 0o700  # still executable by its owner
        assert mode(tree / "pkg" / "m.py") == 0o600 and mode(tree / "pkg" / "__pycache__") == 0o700
        assert not pf.loose_entries(str(tree))

    key = tmp_path / "key.pem"
    key.write_text("-----BEGIN PRIVATE KEY-----\n")
    os.chmod(key, 0o644)
    with pytest.raises(PermissionError, match=r"mode 0644.*chmod 600"):
        pf.check_private_file(str(key), "TLS key")
    os.chmod(key, 0o600)
    pf.check_private_file(str(key), "TLS key")
    if os.getuid() == 0:  # root can make a directory another user's
        theirs = tmp_path / "theirs"
        theirs.mkdir()
        os.chown(theirs, 65534, 65534)
        with pytest.raises(PermissionError, match="belongs to uid 65534"):
            pf.make_private_dir(str(theirs))


def test_user_umask_is_handed_down_to_processes_with_the_private_umask():
    """The daemons run with umask 077; what they start for user code (workers, job entrypoints,
    nodes the autoscaler adds) gets the user's umask from ORRERY_USER_UMASK."""
    import subprocess
    import sys
    from runtime._core import private_files as pf
    code = "from runtime._core.private_files import user_umask; print(oct(user_umask()))"

    def run(umask: int, given: str | None) -> str:
        env = {k: v for k, v in os.environ.items() if k != pf.USER_UMASK_ENV}
        if given is not None:
            env[pf.USER_UMASK_ENV] = given
        return subprocess.run([sys.executable, "-c", code], env=env, umask=umask, capture_output=True,
                              text=True, check=True).stdout.strip()

    assert run(0o077, "2") == "0o2"  # a daemon: the user's, handed down
    assert run(0o077, None) == "0o77"  # nothing handed down: its own
    assert run(0o022, "2") == "0o22"  # a process with a umask of its own choosing keeps it
    with permissive_umask():
        assert pf.private_process_env({})[pf.USER_UMASK_ENV] == "2"
