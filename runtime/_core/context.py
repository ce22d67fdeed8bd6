"""`runtime.get_runtime_context()`: what the current process is (the object `runtime.init()`
returns is session.py's ClusterContext)."""

from __future__ import annotations


from . import worker_state


class RuntimeContext:
    """What the current process is: its job, node, task and actor."""

    def get_job_id(self) -> str:
        return worker_state.current().job_id

    def get_node_id(self) -> str:
        return worker_state.current().node_id

    def get_worker_id(self) -> str:
        return worker_state.current().worker_id

    def get_task_id(self) -> str | None:
        cw = worker_state.current()
        return cw.current_task_id.hex() if cw.mode == "worker" and cw.current_task_id else None

    def get_actor_id(self) -> str | None:
        return worker_state.current().current_actor_id or None

    @property
    def namespace(self) -> str:
        return worker_state.current().namespace

    def get_namespace(self) -> str:
        return self.namespace

    def get_assigned_resources(self) -> dict:
        cw = worker_state.current()
        return dict(cw.assigned_resources) if cw.mode == "worker" else {}

    def get_accelerator_ids(self) -> dict:
        return {"GPU": [str(g) for g in worker_state.current().gpu_ids]}

    @property
    def was_current_actor_reconstructed(self) -> bool:
        return bool(worker_state.current().actor_reconstructed)

    @property
    def gcs_address(self) -> str:
        return worker_state.current().gcs_address


def get_runtime_context() -> RuntimeContext:
    worker_state.current()
    return RuntimeContext()
