"""Mutual TLS in the RPC layer (runtime/rpc/tls.py): settings, and a real TCP server and client
in this process, with TLS on both sides, one side only, or a certificate of another CA."""

from __future__ import annotations

import asyncio
import os
import socket

import pytest

from runtime._testing import tls as certs
from runtime.rpc import connection, tls

TOKEN = "t" * 32


@pytest.fixture
def tls_env(tmp_path, monkeypatch):
    env = certs.tls_env(str(tmp_path))
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return env


def test_settings_name_what_is_missing(monkeypatch, tmp_path):
    monkeypatch.setenv("RUNTIME_USE_TLS", "1")
    for k in ("RUNTIME_TLS_SERVER_CERT", "RUNTIME_TLS_SERVER_KEY", "RUNTIME_TLS_CA_CERT"):
        monkeypatch.delenv(k, raising=False)
    with pytest.raises(tls.TlsConfigError, match="RUNTIME_TLS_SERVER_CERT, RUNTIME_TLS_SERVER_KEY, "
                                                  "RUNTIME_TLS_CA_CERT are not set"):
        tls.settings()
    env = certs.tls_env(str(tmp_path))
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("RUNTIME_TLS_CA_CERT", str(tmp_path / "missing.pem"))
    with pytest.raises(tls.TlsConfigError, match="missing.pem' cannot be read"):
        tls.settings()
    monkeypatch.setenv("RUNTIME_TLS_CA_CERT", env["RUNTIME_TLS_CA_CERT"])
    os.chmod(env["RUNTIME_TLS_SERVER_KEY"], 0o644)
    with pytest.raises(tls.TlsConfigError, match="can be read by every user.*chmod 600"):
        tls.settings()
    os.chmod(env["RUNTIME_TLS_SERVER_KEY"], 0o600)
    assert tls.settings() is not None
    monkeypatch.setenv("RUNTIME_TLS_CA_CERT", env["RUNTIME_TLS_SERVER_KEY"])  # a key is not a CA
    with pytest.raises(tls.TlsConfigError, match="cannot be used"):
        tls.server_context()


def test_ray_spelling_and_off(monkeypatch, tmp_path):
    env = certs.tls_env(str(tmp_path))
    for k, v in env.items():
        monkeypatch.delenv(k, raising=False)
        monkeypatch.setenv(k.replace("RUNTIME_", "RAY_"), v)
    assert tls.enabled() and tls.server_context() is not None
    monkeypatch.setenv("RAY_USE_TLS", "0")
    assert not tls.enabled() and tls.server_context() is None and tls.scheme() == "http"


async def _echo_server(sock: socket.socket) -> asyncio.AbstractServer:
    async def echo(conn, msg, bufs):
        return {"echo": msg["x"]}
    return await connection.serve(sock, {"echo": echo}, TOKEN, name="echo")


def _roundtrip(server_env: dict | None, client_env: dict | None, monkeypatch) -> dict:
    """Serve with server_env's TLS settings (None: plain), call once with client_env's."""
    def apply(env: dict | None) -> None:
        for k in ("RUNTIME_USE_TLS", "RUNTIME_TLS_SERVER_CERT", "RUNTIME_TLS_SERVER_KEY", "RUNTIME_TLS_CA_CERT"):
            monkeypatch.delenv(k, raising=False)
        for k, v in (env or {}).items():
            monkeypatch.setenv(k, v)

    async def go() -> dict:
        sock = connection.bind_socket("tcp:127.0.0.1:0")
        address = connection.socket_address(sock)
        apply(server_env)
        server = await _echo_server(sock)
        try:
            apply(client_env)
            conn = await connection.connect(address, {}, TOKEN, timeout=5)
            try:
                reply, _ = await conn.request({"op": "echo", "x": 7}, timeout=5)
                return reply
            finally:
                conn.close()
        finally:
            server.close()
            await server.wait_closed()

    return asyncio.run(go())


def test_tls_both_sides(tls_env, monkeypatch):
    assert _roundtrip(tls_env, tls_env, monkeypatch)["echo"] == 7


def test_plain_client_to_tls_server_names_the_variables(tls_env, monkeypatch):
    with pytest.raises(tls.PeerRefused, match="RUNTIME_USE_TLS=1, RUNTIME_TLS_SERVER_CERT"):
        _roundtrip(tls_env, None, monkeypatch)


def test_tls_client_to_plain_server_says_so(tls_env, monkeypatch):
    with pytest.raises(tls.PeerRefused, match="does not use TLS"):
        _roundtrip(None, tls_env, monkeypatch)


def test_certificate_of_another_authority_is_refused(tls_env, tmp_path, monkeypatch):
    other = tmp_path / "other"
    other.mkdir()
    rogue = certs.tls_env(str(other))  # a CA of its own: its certificate is not signed by ours
    client = {**rogue, "RUNTIME_TLS_CA_CERT": tls_env["RUNTIME_TLS_CA_CERT"]}  # it trusts our server
    with pytest.raises((tls.PeerRefused, ConnectionError)):
        _roundtrip(tls_env, client, monkeypatch)
    assert os.path.exists(rogue["RUNTIME_TLS_SERVER_CERT"])
