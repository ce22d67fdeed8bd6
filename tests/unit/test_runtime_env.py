"""runtime_env without processes: packing (excludes, content hash, size limit, unsafe zips),
spec checks and merging, and the node cache's setup, reuse and garbage collection."""

from __future__ import annotations

import asyncio
import io
import os
import time
import zipfile
from types import SimpleNamespace

import pytest

from runtime.exceptions import RuntimeEnvSetupError
from runtime.node.runtime_env_agent import RuntimeEnvAgent
from runtime.runtime_env import RuntimeEnv
from runtime.runtime_env.packaging import PackageTooLargeError, pack, unpack
from runtime.runtime_env.spec import merge, resolve, validate


def _tree(root, files):
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def _names(data):
    return sorted(zipfile.ZipFile(io.BytesIO(data)).namelist())


def test_pack_honours_excludes_gitignore_and_skips_caches(tmp_path):
    _tree(tmp_path, {"a.py": b"1", "data/big.bin": b"x" * 10, "logs/x.log": b"l", "sub/keep.txt": b"k",
                     "sub/skip.tmp": b"t", "__pycache__/a.pyc": b"c", ".git/HEAD": b"h", ".gitignore": b"logs/\n"})
    data, _ = pack(str(tmp_path), excludes=["data/", "*.tmp"])
    assert _names(data) == [".gitignore", "a.py", "sub/keep.txt"]


def test_pack_is_a_content_hash(tmp_path):
    _tree(tmp_path / "one", {"a.py": b"1", "b/c.txt": b"2"})
    _tree(tmp_path / "two", {"a.py": b"1", "b/c.txt": b"2"})
    first, h1 = pack(str(tmp_path / "one"))
    os.utime(tmp_path / "two" / "a.py", (1, 1))  # mtimes do not count
    assert pack(str(tmp_path / "two"))[1] == h1 and pack(str(tmp_path / "one"))[0] == first
    (tmp_path / "two" / "a.py").write_bytes(b"changed")
    assert pack(str(tmp_path / "two"))[1] != h1


def test_pack_refuses_past_the_size_limit_naming_the_largest_files(tmp_path):
    _tree(tmp_path, {"model.bin": b"x" * 3000, "small.py": b"1"})
    with pytest.raises(PackageTooLargeError, match=r"model\.bin.*excludes"):
        pack(str(tmp_path), max_bytes=2000)
    assert _names(pack(str(tmp_path), excludes=["*.bin"], max_bytes=2000)[0]) == ["small.py"]


def test_unpack_refuses_members_outside_the_target(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("../escape.txt", "x")
    with pytest.raises(ValueError, match="unsafe path"):
        unpack(buf.getvalue(), str(tmp_path / "t"))
    assert not (tmp_path / "escape.txt").exists()


@pytest.mark.parametrize("env, message", [
    ({"conda": "env.yml"}, "conda environments need conda"),
    ({"image_uri": "x"}, "container runtime"),
    ({"pip": ["a"], "uv": ["b"]}, "'pip' or 'uv', not both"),
    ({"pip": 3}, "list of requirement strings"),
    ({"pip": "no-such-requirements.txt"}, "does not exist"),
    ({"excludes": "*.bin"}, "list of gitignore-style patterns"),
    ({"working_dir": 3}, "path or a package URI"),
    ({"bogus": 1}, "Unknown runtime_env key 'bogus'"),
    ({"config": {"setup_timeout_seconds": 0}}, "setup_timeout_seconds"),
])
def test_bad_runtime_envs_say_what_is_wrong(env, message):
    with pytest.raises((TypeError, ValueError), match=message):
        validate(env)


def test_pip_forms_and_merging(tmp_path):
    req = tmp_path / "requirements.txt"
    req.write_text("# pinned\ntabulate==0.9.0  # tables\n\nsix\n")
    uploads = []
    out = resolve({"pip": str(req), "env_vars": {"A": "1"}}, lambda n, d: uploads.append(n), 1 << 20)
    assert out == {"env_vars": {"A": "1"}, "pip": {"packages": ["tabulate==0.9.0", "six"], "check": False,
                                                   "installer": "pip", "install_options": []}}
    uv = resolve({"uv": {"packages": ["six"], "uv_check": True}}, None, 0)["pip"]
    assert uv["installer"] == "uv" and uv["check"] is True
    assert RuntimeEnv(pip=["six"], env_vars={"B": "2"}) == {"pip": ["six"], "env_vars": {"B": "2"}}
    validate({"_ray_commit": "abc", "env_vars": {}})  # Ray's client adds internal keys
    # Ray's rule: the task's keys replace the job's, env_vars are merged
    job = {"env_vars": {"A": "1", "B": "1"}, "working_dir": "gcs://_ray_pkg_a.zip"}
    assert merge(job, {"env_vars": {"B": "2"}, "working_dir": "gcs://_ray_pkg_b.zip"}) == {
        "env_vars": {"A": "1", "B": "2"}, "working_dir": "gcs://_ray_pkg_b.zip"}


def _agent(tmp_path, packages, ttl=600.0, max_mb=1024):
    fetched = []

    async def fetch(name):
        fetched.append(name)
        return packages[name]
    config = SimpleNamespace(runtime_env_cache_ttl_s=ttl, runtime_env_cache_max_mb=max_mb)
    return RuntimeEnvAgent(str(tmp_path / "cache"), fetch, config), fetched


def test_agent_unpacks_once_and_collects_unused_entries(tmp_path):
    _tree(tmp_path / "wd", {"a.txt": b"a"})
    data, digest = pack(str(tmp_path / "wd"))
    uri = f"gcs://_ray_pkg_{digest}.zip"
    agent, fetched = _agent(tmp_path, {f"_ray_pkg_{digest}.zip": data}, ttl=60)

    async def go():
        return await asyncio.gather(*(agent.setup({"working_dir": uri, "env_vars": {"X": "1"}}) for _ in range(5)))
    contexts = asyncio.run(go())
    assert len(fetched) == 1 and len({c["cwd"] for c in contexts}) == 1
    ctx = contexts[0]
    assert open(os.path.join(ctx["cwd"], "a.txt")).read() == "a" and ctx["env_vars"] == {"X": "1"}
    agent.acquire(ctx["keys"])
    assert agent.sweep(now=time.time() + 3600) == []  # in use: kept however old
    agent.release(ctx["keys"])
    assert agent.sweep(now=time.time() + 30) == []  # unused, but not for long
    assert agent.sweep(now=time.time() + 3600) == [uri] and not os.path.exists(ctx["cwd"])
    assert agent.describe() == []


def test_agent_fails_with_runtime_env_setup_error_and_remembers_it(tmp_path):
    agent, fetched = _agent(tmp_path, {})

    async def go():
        for _ in range(3):
            with pytest.raises(RuntimeEnvSetupError, match="_ray_pkg_0123456789abcdef"):
                await agent.setup({"working_dir": "gcs://_ray_pkg_0123456789abcdef.zip"})
    asyncio.run(go())
    assert len(fetched) == 1  # a queue of tasks fails fast, not one fetch each
