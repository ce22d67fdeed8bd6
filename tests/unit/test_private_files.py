"""runtime/_core/private_files.py: modes set whatever the umask, existing loose ones
tightened, secrets with loose modes refused."""

from __future__ import annotations

import contextlib
import os
import stat

import pytest


@contextlib.contextmanager
def permissive_umask():
    old = os.umask(0o002)
    try:
        yield
    finally:
        os.umask(old)


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
