"""What the thin client and its proxy agree on: how values and errors travel, and the port.

Messages (client -> proxy; `*` marks one-way messages, the rest are requests):

    init {namespace, runtime_env}        -> {job_id, node_id, namespace, owner, gcs_address, ...}
    task* {fid, task_id, num_returns, cell}  [fn blob if new] + value(args, kwargs, options)
    create_actor {cid, cell}             [class blob if new] + value(args, kwargs, options) -> {actor_id, meta, owned}
    actor_call* {actor_id, meta, method, num_returns, task_id, cell} + value(args, kwargs)
    put {cell} + value                   -> {ref}
    get {refs, timeout}                  -> value(list)
    wait {refs, num_returns, timeout}    -> {ready: [index, ...]}
    cancel {ref, force, recursive}       -> {}
    release* {refs: [[id, count], ...]}  the client dropped its last ObjectRef to each id
    actor_gone* {actor_id}               the client's owning handle went out of scope
    gcs {msg} + buffers                  -> the control store's reply (state API, kill, names, ...)
    pg_ready {pg}                        -> {ref}
    flush_events                         -> {}

Proxy -> client: `task_output*` (a task's printed lines, as a local driver gets them) and
`warning*` (e.g. a task no node can run).

A reply that carries a value lists the ObjectRefs pickled inside it (`nested`), so the client
can count them: the proxy keeps each ref it sent alive until the client says it released it.
Errors come back as `{"error": true}` plus the pickled exception, raised as-is in the client.
"""

from __future__ import annotations

from typing import Any

from ..serialization.core import deserialize, serialize

DEFAULT_PORT = 10001  # Ray's client server port


def pack(value: Any) -> tuple[list, list]:
    """(buffers to send, ObjectRefs found inside) for a value."""
    so = serialize(value)
    from .._core.object_ref import ObjectRef
    return [so.meta, *so.buffers], [r for r in so.nested_refs if isinstance(r, ObjectRef)]


def unpack(bufs: list) -> Any:
    return deserialize(bufs[0], bufs[1:])


def pack_error(exc: BaseException) -> tuple[dict, list]:
    try:
        bufs, _ = pack(exc)
    except Exception:  # noqa: BLE001 - an exception that cannot be pickled still gets through as text
        bufs, _ = pack(RuntimeError(f"{type(exc).__name__}: {exc}"))
    return {"error": True}, bufs


def parse_client_address(address: str) -> tuple[str, int]:
    rest = address.removeprefix("client://")
    host, _, port = rest.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"Invalid client address {address!r}; expected client://HOST:PORT "
                         f"(the head's client server, port {DEFAULT_PORT} by default).")
    return host, int(port)
