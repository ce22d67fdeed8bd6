"""`request_resources` (Ray's `ray.autoscaler.sdk.request_resources`): ask the autoscaler to
keep the cluster big enough for these bundles, whatever runs now. A new call replaces the
previous request; `request_resources()` with nothing clears it."""

from __future__ import annotations

import json

from .._core.session import ensure_initialized


def request_resources(num_cpus: int | None = None, bundles: list[dict] | None = None) -> None:
    if num_cpus is not None and (not isinstance(num_cpus, int) or num_cpus < 0):
        raise ValueError(f"num_cpus must be a non-negative int, got {num_cpus!r}.")
    if bundles is not None and not (isinstance(bundles, list) and all(isinstance(b, dict) for b in bundles)):
        raise ValueError(f"bundles must be a list of resource dicts like [{{'CPU': 1}}], got {bundles!r}.")
    wanted = [{"CPU": 1.0}] * (num_cpus or 0) + [dict(b) for b in bundles or ()]
    cw = ensure_initialized()
    from .monitor import REQUEST_KEY
    cw.run_sync(cw.gcs_request({"op": "kv_put", "key": REQUEST_KEY}, [json.dumps(wanted).encode()]))
