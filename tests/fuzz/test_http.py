"""The HTTP endpoints: every route of the dashboard (from its aiohttp application) with
random path parameters, query strings, methods and bodies (JSON made of any values, Ray's job
request fields with values of any type, bytes), random paths, and each node's Prometheus
endpoint with random methods and paths. Every request gets an answer that is not a server
error; afterwards both servers are alive, their fds and memory are back near where they were,
every GET endpoint still serves and tasks run.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import urllib.parse

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from . import strategies, support
from .conftest import SCALE, deadline_s

HTTP_FUZZ = settings(max_examples=max(1, int(150 * SCALE)), deadline=None, derandomize=True, database=None,
                     print_blob=False, suppress_health_check=list(HealthCheck))
METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "FOO", "CONNECT"]


def _routes() -> list[tuple[str, str, list[str]]]:
    """(method, path template, parameter names) of every route of the dashboard's app."""
    from runtime.dashboard.server import make_app
    app = make_app("/nonexistent", gcs=None)
    out = []
    for route in app.router.routes():
        info = route.resource.get_info()
        template = info.get("formatter") or info.get("path") or info.get("prefix", "") + "/{filename}"
        out.append((route.method, template, re.findall(r"{(\w+)}", template)))
    return out


_segment = st.one_of(st.text(max_size=30), st.sampled_from(["gcs", "tasks", "actors", "nodes", "logs", "..", ".",
                                                            "job_1", "raysubmit_x", "%2e%2e", "a/b"]))
_query = st.dictionaries(st.sampled_from(["limit", "detail", "filter_keys", "filter_predicates", "filter_values",
                                          "job_id", "node_id", "filename", "lines", "x", "glob", "timeout"]),
                         st.one_of(st.text(max_size=20), st.integers().map(str)), max_size=4)


def _job_request() -> st.SearchStrategy:
    from runtime.dashboard.jobs_api import _REQUEST_FIELDS
    fields = {k: (strategies._for_field(k) if k == "entrypoint" else strategies.values()) for k in _REQUEST_FIELDS}
    return st.fixed_dictionaries({}, optional=fields)


def _bodies() -> st.SearchStrategy:
    json_values = strategies.values().map(lambda v: json.dumps(v, default=repr).encode())
    return st.one_of(st.just(b""), st.binary(max_size=300), json_values,
                     _job_request().map(lambda v: json.dumps(v, default=repr).encode()))


def _request(lst: support.Listener, method: str, path: str, body: bytes, content_type: str) -> int:
    host, _, port = lst.address[4:].rpartition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=deadline_s())
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        conn.putheader("Content-Type", content_type)
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


@pytest.mark.slow
def test_every_dashboard_route_and_the_metrics_endpoints_with_random_requests(cluster):
    shutil.rmtree(strategies.ESCAPE_DIR, ignore_errors=True)
    before = cluster.usage()
    listeners = cluster.listeners()
    dashboard = next(lst for lst in listeners if lst.server == "dashboard")
    metrics = [lst for lst in listeners if lst.server == "metrics"]
    routes = _routes()
    assert len(routes) >= 15 and any(m == "POST" for m, _, _ in routes), routes
    statuses: dict[int, int] = {}

    @HTTP_FUZZ
    @given(route=st.sampled_from(routes), values=st.lists(_segment, min_size=3, max_size=3), query=_query,
           method=st.one_of(st.none(), st.sampled_from(METHODS)), body=_bodies(),
           content_type=st.sampled_from(["application/json", "text/plain", "application/octet-stream", "x/y"]),
           random_path=st.one_of(st.none(), st.text(max_size=40)))
    def dashboard_request(route, values, query, method, body, content_type, random_path) -> None:
        route_method, template, params = route
        path = template
        for name, value in zip(params, values):
            path = path.replace("{" + name + "}", urllib.parse.quote(value, safe=""))
        if random_path is not None:
            path = "/" + urllib.parse.quote(random_path, safe="/")
        if query:
            path += "?" + urllib.parse.urlencode(query)
        status = _request(dashboard, method or route_method, path, body, content_type)
        statuses[status] = statuses.get(status, 0) + 1
        assert status < 500, f"{method or route_method} {path} {body[:200]!r}: {status}"

    @settings(HTTP_FUZZ, max_examples=max(1, int(20 * SCALE)))
    @given(method=st.sampled_from(METHODS), path=st.text(max_size=30), body=st.binary(max_size=100))
    def metrics_request(method, path, body) -> None:
        for lst in metrics:
            status = _request(lst, method, "/" + urllib.parse.quote(path, safe="/"), body, "text/plain")
            assert status < 500, (lst, method, path, status)

    dashboard_request()
    metrics_request()
    assert statuses.get(200, 0) > 0 and sum(statuses.values()) >= len(routes), statuses
    assert not os.path.exists(strategies.ESCAPE_DIR), "the dashboard wrote outside its directories"
    from .test_ops import _assert_http_serves
    _assert_http_serves(cluster)
    cluster.assert_back_to(before, "random HTTP requests")
    cluster.run_tasks()
