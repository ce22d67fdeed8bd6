"""The head's package store: working_dir and py_modules zips uploaded by drivers and by job
clients (the dashboard's `PUT /api/packages/gcs/<name>` lands here too), fetched by every node
that needs one. One file per package under `<session>/packages/`, named by content hash, so it
survives a restart of the control store as the session directory does."""

from __future__ import annotations

import os
import re
import time

from .._core.private_files import make_private_dir, write_private_file

_NAME = re.compile(r"^_ray_pkg_[0-9a-f]{8,40}\.(zip|whl)$|^[A-Za-z0-9_][A-Za-z0-9_.-]{0,199}\.(zip|whl)$")


def check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name) or ".." in name:
        raise ValueError(f"{name!r} is not a package name: letters, digits, '_', '-' and '.', ending in .zip "
                         "or .whl, as the job client makes (_ray_pkg_<hash>.zip).")
    return name


def name_of_uri(uri: str) -> str:
    protocol, sep, name = uri.partition("://")
    if not sep or protocol != "gcs":
        raise ValueError(f"{uri!r} is not a package URI of this cluster; they look like gcs://_ray_pkg_<hash>.zip "
                         "(the job client and init() upload local directories and make them).")
    return check_name(name)


class PackageStore:
    def __init__(self, session_dir: str) -> None:
        self.root = os.path.join(session_dir, "packages")

    def path(self, name: str) -> str:
        return os.path.join(self.root, check_name(name))

    def exists(self, name: str) -> bool:
        return os.path.exists(self.path(name))

    def put(self, name: str, data: bytes) -> None:
        path = self.path(name)
        make_private_dir(self.root)
        write_private_file(path, data)  # whole (renamed into place), 0600

    def get(self, name: str) -> bytes:
        path = self.path(name)
        if not os.path.exists(path):
            raise ValueError(f"Package gcs://{name} is not in this cluster's package store; it is uploaded when a "
                             "driver or the job client first uses the local directory it was made from.")
        os.utime(path)  # its last use, for remove_unused
        with open(path, "rb") as f:
            return f.read()

    def remove_unused(self, in_use: set[str], ttl_s: float) -> list[str]:
        """Packages no live job names that nobody fetched for ttl_s (Ray deletes a job's
        packages when the job ends; a package shared by jobs stays while any uses it)."""
        removed = []
        now = time.time()
        for name in os.listdir(self.root) if os.path.isdir(self.root) else []:
            path = os.path.join(self.root, name)
            if name in in_use or name.endswith(".tmp") or not os.path.isfile(path):
                continue
            if now - os.path.getmtime(path) > ttl_s:
                os.remove(path)
                removed.append(name)
        return removed
