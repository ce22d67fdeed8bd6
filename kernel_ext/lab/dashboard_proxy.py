"""The cluster's dashboard through the Jupyter server, at `<base_url>/orrery/dashboard/`: on
Binder and JupyterHub only the Jupyter port is reachable, so the web UI (and the dashboard's
JSON, which the page fetches by relative URLs) is proxied here, behind Jupyter's own login.

It proxies GET only: the page reads; jobs are submitted with the job API or `runtime job`.
The target is the dashboard of the cluster this server is joined to (the notebook in focus's,
see connection.py); the cluster's token goes with each request, so a dashboard bound beyond
loopback answers too.
"""

from __future__ import annotations

from typing import Any

from jupyter_server.base.handlers import JupyterHandler
from tornado import httpclient, web

from .connection import ClusterConnection, NotConnected

_PASSED_HEADERS = ("Content-Type", "Content-Disposition", "Cache-Control")


def _dashboard() -> tuple[str | None, str]:
    from runtime._core import api_state, worker_state
    ctx, cw = api_state.context, worker_state.current_or_none()
    return (getattr(ctx, "dashboard_url", None), getattr(cw, "token", ""))


class DashboardProxyHandler(JupyterHandler):
    @web.authenticated
    async def get(self, path: str) -> None:
        cluster: ClusterConnection = self.settings["orrery_cluster"]
        try:
            url, token = await cluster.call(_dashboard)
        except NotConnected as e:
            self.set_status(503)
            self.finish(f"No cluster to show: {e}")
            return
        if not url:
            self.set_status(503)
            self.finish("The cluster this server is joined to has no dashboard (started with "
                        "--include-dashboard false, or aiohttp is not installed).")
            return
        query = f"?{self.request.query}" if self.request.query else ""
        try:
            from runtime.rpc import tls  # a TLS cluster's dashboard wants our certificate too
            response = await httpclient.AsyncHTTPClient().fetch(
                f"{tls.scheme()}://{url}/{path}{query}", headers={"Authorization": f"Bearer {token}"},
                raise_error=False, request_timeout=60, ssl_options=tls.client_context())
        except OSError as e:
            self.set_status(502)
            self.finish(f"The dashboard at {url} did not answer: {e}")
            return
        self.set_status(response.code if response.code != 599 else 502)
        for name in _PASSED_HEADERS:
            if name in response.headers:
                self.set_header(name, response.headers[name])
        self.finish(response.body or b"")


def routes(base_url: str) -> list[tuple[str, Any]]:
    from jupyter_server.utils import url_path_join
    prefix = url_path_join(base_url, "orrery", "dashboard")
    # `/orrery/dashboard` without the slash: the page's relative URLs need the directory form.
    return [(prefix, web.RedirectHandler, {"url": prefix + "/"}), (prefix + "/(.*)", DashboardProxyHandler)]
