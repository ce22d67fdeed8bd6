"""Getting back an object whose only shared-memory copy was lost with its node.

The owner rebuilds it by running its task again (lineage kept by the TaskManager); a borrower
asks the owner to (recover_object) and waits for its answer. `plan()` is the owner's decision,
sans-I/O; ObjectRecovery carries it out through `host` (the CoreWorker).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ..exceptions import ObjectReconstructionFailedError, OwnerDiedError
from ..worker import output
from . import task_events as te
from .memory_store import ERROR, INLINE, SHM, StoreEntry
from .object_ref import ObjectRef
from .task_spec import TaskSpec

if TYPE_CHECKING:  # the core worker imports this module, never the other way round
    from .core_worker import CoreWorker

logger = logging.getLogger("runtime")

# What the owner does about an object reported lost (plan()).
SKIP = "skip"  # freed, already rebuilt elsewhere, or not in shared memory: nothing to wait for
FAIL = "fail"  # cannot be rebuilt: its readers get the reason
RESUBMIT = "resubmit"  # run its task again, then wait
WAIT = "wait"  # already being made (pending): wait


def plan(entry: StoreEntry | None, spec: TaskSpec | None, lost_node: str) -> tuple[str, str]:
    """(action, why) for an owned object whose copy on `lost_node` is reported lost."""
    if entry is None or (entry.state == SHM and entry.node_id != lost_node) or entry.state in (INLINE, ERROR):
        return SKIP, ""
    if entry.state != SHM:
        return WAIT, ""
    if spec is None:
        return FAIL, ("no lineage is kept for it (put() objects, actor results and tasks with max_retries=0 "
                      "cannot be rebuilt; raise max_retries)")
    if spec.max_retries == 0:
        return FAIL, "its task has no retries left (max_retries); raise max_retries to let lost results be rebuilt"
    return RESUBMIT, ""


class ObjectRecovery:
    def __init__(self, host: CoreWorker) -> None:
        self.host = host

    async def reconstruct(self, oid: bytes, lost_node: str, why_lost: str = "") -> None:
        """Make `oid` (owned, its copy lost with `lost_node`) available again, or store why not."""
        host = self.host
        spec = host.task_manager.lineage.get(oid)
        action, why = plan(host.store.entries.get(oid), spec, lost_node)
        if action == SKIP:
            return
        if action == FAIL:
            host.store.set_error(oid, ObjectReconstructionFailedError(
                oid.hex(), f"its only copy was on node {lost_node[:8]}, which is gone, and {why}"))
            return
        if action == RESUBMIT:
            host.task_manager.resubmit_for_recovery(spec)
            host.normal_submitter.forget_leases_on(lost_node)
            output.in_context(spec, logger.warning, "Rebuilding the results of task `%s`: their only copy was on "
                              "node %s: %s.", spec.name, lost_node[:8], why_lost or "the node is gone")
            host.task_event(spec, te.PENDING)
            host.submit_on_loop(spec)
        fut = host.loop.create_future()
        if host.store.add_waiter(oid, lambda: host.on_loop(lambda: fut.done() or fut.set_result(None))):
            await fut

    async def recover(self, ref: ObjectRef, lost_node: str, why_lost: str = "") -> None:
        """A reader found `ref`'s copy on `lost_node` gone: rebuild it (owner) or have the owner do so."""
        host = self.host
        if ref._owner == host.address:
            await self.reconstruct(ref._id, lost_node, why_lost)
            return
        try:
            conn = await host.get_conn(ref._owner)
            reply, bufs = await conn.request({"op": "recover_object", "o": ref._id, "node": lost_node,
                                              "why": why_lost}, timeout=None)
        except (ConnectionError, OSError) as e:
            host.store.set_error(ref._id, OwnerDiedError(ref.hex(), f"its copy was lost with node {lost_node[:8]} "
                                                         f"and its owner {ref._owner} is unreachable ({e})"))
            return
        host.store.reset_pending(ref._id)
        host.apply_object_reply(ref._id, reply, bufs)
