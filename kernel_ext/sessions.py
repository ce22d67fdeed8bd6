"""Session actors for `%%remote --session NAME` and `%cluster attach NAME`.

A session is a detached actor named `session:NAME` in the `kernel_ext` namespace. Detached, it
outlives the kernel, so a restarted kernel gets it back with `%cluster attach NAME` — as long
as the cluster itself lives on: one started with `runtime start --head` or
`%cluster start --detach`, not the kernel's embedded cluster, which ends with the kernel.
"""

from __future__ import annotations

from typing import Any

from IPython.core.error import UsageError

import runtime

from .remote_cell import SessionActor

NAMESPACE = "kernel_ext"
PREFIX = "session:"


def actor_name(name: str) -> str:
    return PREFIX + name


def get_or_create(name: str, options: dict) -> Any:
    """The session's actor, created with the cell's resources and env on first use."""
    actor_opts = {k: v for k, v in options.items() if k in ("num_cpus", "num_gpus", "memory", "resources",
                                                            "runtime_env")}
    actor_opts.setdefault("num_cpus", 0)  # a session waits between cells: it holds no CPU unless asked
    cls = runtime.remote(SessionActor)
    return cls.options(name=actor_name(name), namespace=NAMESPACE, lifetime="detached", get_if_exists=True,
                       **actor_opts).remote(name)


def find(name: str) -> Any:
    try:
        return runtime.get_actor(actor_name(name), namespace=NAMESPACE)
    except ValueError:
        known = ", ".join(list_names()) or "none"
        raise UsageError(f"No session named {name!r} in this cluster (sessions: {known}). A session is created by "
                         f"the first `%%remote --session {name}` cell; it ends when its cluster stops.") from None


def list_names() -> list[str]:
    from runtime.util import state
    return sorted(a["name"][len(PREFIX):] for a in state.list_actors(filters=[("namespace", "=", NAMESPACE)])
                  if a["name"].startswith(PREFIX) and a["state"] != "DEAD")
