"""Files and directories only the cluster's user may read: session directories, tokens, keys,
shared-memory objects, spilled objects, logs.

Modes are set explicitly, whatever the process umask: `os.makedirs(mode=...)` and
`open(..., mode)` are narrowed by the umask but never widened, and `makedirs` leaves parents
that already exist as they are; here every directory is made (or tightened) to 0700 and every
file opened 0600. The daemons (control store, node managers) also run with umask 077
(`PRIVATE_UMASK`, set by the launcher, with `private_process_env`), so what they and the tools
they start (uv, pip, SQLite) write is private too; workers and job entrypoints get the user's
own umask back (`user_umask()`) before they run user code.
"""

from __future__ import annotations

import os
import stat
from typing import IO, Any

PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600
PRIVATE_UMASK = 0o077


# The user's umask, handed down (in octal) to the processes started with PRIVATE_UMASK.
USER_UMASK_ENV = "ORRERY_USER_UMASK"


def process_umask() -> int:
    """This process's umask, read without changing it (Linux's /proc/self/status); elsewhere
    read by setting and restoring it."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(PRIVATE_UMASK)
    os.umask(old)
    return old


def user_umask() -> int:
    """The umask user code should run with: this process's, or, in a process that runs with
    PRIVATE_UMASK (a daemon, the autoscaler starting nodes), the user's it was handed in
    USER_UMASK_ENV."""
    current = process_umask()
    given = os.environ.get(USER_UMASK_ENV, "")
    if current == PRIVATE_UMASK and given:
        try:
            return int(given, 8) & 0o777
        except ValueError:
            pass
    return current


def private_process_env(env: dict[str, str]) -> dict[str, str]:
    """`env` for a process started with umask PRIVATE_UMASK: it carries the user's umask, for
    the workers and job entrypoints it starts in turn."""
    return {**env, USER_UMASK_ENV: format(user_umask(), "o")}


def _not_ours(path: str, st: os.stat_result) -> PermissionError:
    return PermissionError(
        f"{path} belongs to uid {st.st_uid}, not to this user (uid {os.getuid()}): another user could read or "
        "replace the cluster's files there. Remove it, or point TMPDIR (or --temp-dir) at a directory of your own.")


def make_private_dir(path: str, *, parents: bool = False) -> str:
    """Make directory `path` with mode 0700, or bring an existing one of this user's to 0700.
    `parents`: make missing parents too, each 0700 (parents that exist are left as they are).
    Raises PermissionError if `path` exists and belongs to another user (following a
    symbolic link: what matters is the directory it leads to). Returns `path`."""
    if parents:
        parent = os.path.dirname(os.path.abspath(path))
        if parent and not os.path.isdir(parent):
            make_private_dir(parent, parents=True)
    try:
        os.mkdir(path, PRIVATE_DIR_MODE)
    except FileExistsError:
        pass
    st = os.stat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise NotADirectoryError(f"{path} exists and is not a directory; remove it or pick another place.")
    if st.st_uid != os.getuid():
        raise _not_ours(path, st)
    if stat.S_IMODE(st.st_mode) != PRIVATE_DIR_MODE:
        os.chmod(path, PRIVATE_DIR_MODE)
    return path


def open_private(path: str, mode: str = "ab", **kwargs: Any) -> IO[Any]:
    """open(path, mode) for writing ("w", "a", "x", with or without "b" / "+"), the file made
    0600, or an existing one of this user's brought to 0600."""
    flags = os.O_CREAT | (os.O_RDWR if "+" in mode else os.O_WRONLY)
    if "a" in mode:
        flags |= os.O_APPEND
    elif "w" in mode:
        flags |= os.O_TRUNC
    elif "x" in mode:
        flags |= os.O_EXCL
    else:
        raise ValueError(f"open_private() opens files for writing ('w', 'a' or 'x'), not with mode {mode!r}.")
    fd = os.open(path, flags | getattr(os, "O_CLOEXEC", 0), PRIVATE_FILE_MODE)
    try:
        st = os.fstat(fd)
        if stat.S_IMODE(st.st_mode) != PRIVATE_FILE_MODE and st.st_uid == os.getuid():
            os.fchmod(fd, PRIVATE_FILE_MODE)
        return os.fdopen(fd, mode, **kwargs)
    except BaseException:
        os.close(fd)
        raise


def write_private_file(path: str, data: bytes | str) -> None:
    """Write `path` whole (a temporary file renamed over it: readers never see half of it),
    mode 0600."""
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open_private(tmp, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def copy_private(src: str, dst: str) -> None:
    """Copy file `src` to `dst`, which is made 0600 first (shutil.copyfile alone makes it 0666
    less the umask; into an existing file it keeps the file's mode, and copies with sendfile)."""
    import shutil
    with open_private(dst, "wb"):
        pass
    shutil.copyfile(src, dst)


def make_tree_private(root: str) -> None:
    """Take group and other permissions off everything under `root` (and `root`), keeping the
    owner's (so scripts stay executable). Symbolic links are not followed. For trees that other
    tools wrote: an unpacked package, a pip or uv install."""
    def tighten(path: str) -> None:
        st = os.lstat(path)
        if not stat.S_ISLNK(st.st_mode) and stat.S_IMODE(st.st_mode) & PRIVATE_UMASK:
            os.chmod(path, stat.S_IMODE(st.st_mode) & ~PRIVATE_UMASK)
    tighten(root)
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            tighten(os.path.join(dirpath, name))


def make_pycache_dirs(root: str) -> None:
    """An empty `__pycache__` (0700) in every directory under `root` that holds a .py file.
    Python makes that directory when a module is first imported, with the importing process's
    umask (a worker's is the user's); made beforehand it is private, and the .pyc files Python
    writes into it take their source file's mode (0600 or 0700 under make_tree_private)."""
    for dirpath, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        if any(name.endswith(".py") for name in files):
            make_private_dir(os.path.join(dirpath, "__pycache__"))


def loose_entries(root: str) -> list[str]:
    """Everything under `root` (and `root`) that group or others may access, as
    "PATH (mode 0NNN)"; symbolic links are not followed."""
    found = []
    for path in [root] + [os.path.join(d, n) for d, dirs, files in os.walk(root) for n in dirs + files]:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        if not stat.S_ISLNK(st.st_mode) and stat.S_IMODE(st.st_mode) & PRIVATE_UMASK:
            found.append(f"{path} (mode {stat.S_IMODE(st.st_mode):04o})")
    return found


def check_private_file(path: str, what: str = "file") -> None:
    """Refuse a secret file (a TLS key, a token file) that others could read: it must belong
    to this user and have no group or other permissions, as ssh asks of its keys. Raises
    PermissionError saying so and what to run; FileNotFoundError if it is missing."""
    st = os.stat(path)
    if st.st_uid != os.getuid():
        raise PermissionError(f"The {what} {path} belongs to uid {st.st_uid}, not to this user (uid "
                              f"{os.getuid()}); use a copy of your own, with `chmod 600`.")
    mode = stat.S_IMODE(st.st_mode)
    if mode & PRIVATE_UMASK:
        raise PermissionError(f"The {what} {path} can be read or written by other users (mode {mode:04o}); "
                              f"run `chmod 600 {path}` and start again.")
