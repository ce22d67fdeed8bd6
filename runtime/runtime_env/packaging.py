"""Packing a working_dir or py_module into a zip named by its content, and unpacking it safely.

The zip is made deterministic (sorted names, a fixed timestamp), so its SHA-1 is a content
hash: the same directory packs to the same URI on every machine and is uploaded only once.
Ray's URIs have the same shape: `gcs://_ray_pkg_<hash>.zip`.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import zipfile
from typing import Iterable

import pathspec

from .._core.private_files import make_pycache_dirs, make_tree_private

# Never worth shipping: byte-code caches and version-control metadata (Ray skips .git too).
ALWAYS_EXCLUDED = [".git/", "__pycache__/", "*.pyc", ".ipynb_checkpoints/"]
_FIXED_TIME = (1980, 1, 1, 0, 0, 0)


class PackageTooLargeError(ValueError):
    pass


def _files(root: str, excludes: Iterable[str]) -> list[tuple[str, str]]:
    """(absolute path, archive name) of every file under root that no pattern excludes.
    Patterns are gitignore's (Ray's `excludes`), relative to root; a `.gitignore` in root is
    honoured too, as Ray does."""
    patterns = list(ALWAYS_EXCLUDED) + list(excludes)
    gitignore = os.path.join(root, ".gitignore")
    if os.path.isfile(gitignore):
        with open(gitignore, encoding="utf-8", errors="replace") as f:
            patterns += f.read().splitlines()
    spec = pathspec.GitIgnoreSpec.from_lines(patterns)
    out = []
    for dirpath, dirs, names in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        rel_dir = "" if rel_dir == "." else rel_dir.replace(os.sep, "/") + "/"
        dirs[:] = sorted(d for d in dirs if not spec.match_file(rel_dir + d + "/"))
        for name in sorted(names):
            rel = rel_dir + name
            if not spec.match_file(rel):
                out.append((os.path.join(dirpath, name), rel))
    return out


def pack(path: str, excludes: Iterable[str] = (), prefix: str = "", max_bytes: int = 500 << 20,
         what: str = "working_dir") -> tuple[bytes, str]:
    """Zip a directory (its contents at the top, or under `prefix/`) or a single file; returns
    (zip bytes, content hash). Raises PackageTooLargeError past max_bytes of file data."""
    if os.path.isdir(path):
        files = _files(path, excludes)
    elif os.path.isfile(path):
        files = [(path, os.path.basename(path))]
    else:
        raise ValueError(f"runtime_env {what} {path!r} does not exist; give a local directory, a .zip, or an "
                         "uploaded package URI (gcs://_ray_pkg_<hash>.zip).")
    total = sum(os.path.getsize(p) for p, _ in files)
    if total > max_bytes:
        biggest = sorted(files, key=lambda f: -os.path.getsize(f[0]))[:3]
        shown = ", ".join(f"{rel} ({os.path.getsize(p) >> 20} MiB)" for p, rel in biggest)
        raise PackageTooLargeError(
            f"runtime_env {what} {path!r} holds {total / (1 << 20):.1f} MiB after excludes, more than the "
            f"{max_bytes / (1 << 20):.0f} MiB limit. The largest files: {shown}. Add them to runtime_env's "
            "'excludes' (gitignore patterns) and put data in the object store or shared storage, or raise "
            "the limit with RUNTIME_RUNTIME_ENV_MAX_PACKAGE_MB.")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
        for full, rel in files:
            info = zipfile.ZipInfo(prefix + rel, _FIXED_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = (stat.S_IMODE(os.stat(full).st_mode) | stat.S_IFREG) << 16
            with open(full, "rb") as f:
                z.writestr(info, f.read(), compresslevel=1)
    data = buf.getvalue()
    return data, hashlib.sha1(data).hexdigest()[:16]


def fingerprint(path: str) -> tuple:
    """A cheap stand-in for the content (names, sizes, mtimes), to know when to pack again."""
    if os.path.isfile(path):
        st = os.stat(path)
        return (path, st.st_size, st.st_mtime_ns)
    rows = []
    for dirpath, dirs, names in os.walk(path):
        dirs.sort()
        for name in sorted(names):
            try:
                st = os.stat(os.path.join(dirpath, name))
            except OSError:
                continue
            rows.append((dirpath, name, st.st_size, st.st_mtime_ns))
    return (path, tuple(rows))


def unpack(data: bytes, target: str) -> None:
    """Unzip into target (made atomically: a half-written directory is never seen). A member
    that would land outside target is refused."""
    tmp = f"{target}.{os.getpid()}.tmp"
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        for member in z.namelist():
            if member.startswith("/") or ".." in member.split("/"):
                raise ValueError(f"package has an unsafe path {member!r}; refusing to unpack it.")
        z.extractall(tmp)
        for info in z.infolist():  # zipfile drops the mode bits: keep scripts executable
            mode = info.external_attr >> 16
            if mode and not info.is_dir():
                os.chmod(os.path.join(tmp, info.filename), stat.S_IMODE(mode))
        make_pycache_dirs(tmp)  # so that workers, which run with the user's umask, write private ones
        make_tree_private(tmp)  # the owner's bits only: it lives in the session directory
    try:
        os.replace(tmp, target)
    except OSError:  # another process unpacked it first
        import shutil
        shutil.rmtree(tmp, ignore_errors=True)
        if not os.path.isdir(target):
            raise
