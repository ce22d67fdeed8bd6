"""Mutual TLS for every TCP link, configured as Ray's is (docs/security.md).

    RUNTIME_USE_TLS=1                  (or RAY_USE_TLS)
    RUNTIME_TLS_SERVER_CERT=cert.pem   this process's certificate, shown on both sides of a link
    RUNTIME_TLS_SERVER_KEY=key.pem     its private key
    RUNTIME_TLS_CA_CERT=ca.pem         the authority that signed every certificate of the cluster

With TLS on, a listener accepts only peers whose certificate the CA signed, and every
connection this process opens presents its own. Every process of a cluster inherits the
settings from the environment of whoever started it (`runtime start --tls-cert ...` sets
them). Unix sockets are left as they are: they never leave the machine, and the
session directory's permissions guard them.

Host names are not checked: nodes come and go on addresses nobody knows when the
certificates are made, so the CA's signature, not the name, is what admits a peer (as in
Ray's own deployment guide, which signs one certificate for every node).
"""

from __future__ import annotations

import functools
import os
import ssl
import stat

USE = "USE_TLS"
CERT, KEY, CA = "TLS_SERVER_CERT", "TLS_SERVER_KEY", "TLS_CA_CERT"
HANDSHAKE_TIMEOUT_S = 10.0
# What an error about TLS names, so the user knows what to set.
VARIABLES = "RUNTIME_USE_TLS=1, RUNTIME_TLS_SERVER_CERT, RUNTIME_TLS_SERVER_KEY and RUNTIME_TLS_CA_CERT"


class PeerRefused(ConnectionError):
    """A TCP peer closed the link at once or failed the handshake: TLS on one side only, a
    certificate its CA did not sign, or a wrong token. The message says which to check."""


class TlsConfigError(ValueError):
    """TLS is asked for but its files are missing or unreadable; the message says which."""


def _env(name: str) -> str:
    return os.environ.get("RUNTIME_" + name) or os.environ.get("RAY_" + name) or ""


def enabled() -> bool:
    return _env(USE).strip().lower() in ("1", "true", "yes", "on")


def settings() -> tuple[str, str, str] | None:
    """(cert, key, ca) when TLS is on, else None; raises TlsConfigError naming what is missing."""
    if not enabled():
        return None
    files = {name: _env(name) for name in (CERT, KEY, CA)}
    missing = [f"RUNTIME_{n}" for n, v in files.items() if not v]
    if missing:
        raise TlsConfigError(f"RUNTIME_USE_TLS is on but {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} "
                             f"not set: set {VARIABLES} to PEM files (or turn TLS off with RUNTIME_USE_TLS=0).")
    for name, path in files.items():
        if not os.access(path, os.R_OK):
            raise TlsConfigError(f"RUNTIME_{name}={path!r} cannot be read: give the path of a readable PEM file.")
    # A key every user of the machine can read is no secret. (Group bits are let be: a
    # Kubernetes Secret mounted for a pod's fsGroup is group-readable.)
    mode = stat.S_IMODE(os.stat(files[KEY]).st_mode)
    if mode & 0o007:
        raise TlsConfigError(f"RUNTIME_TLS_SERVER_KEY={files[KEY]!r} can be read by every user of this machine "
                             f"(mode {mode:04o}): run `chmod 600 {files[KEY]}`.")
    return files[CERT], files[KEY], files[CA]


def server_context() -> ssl.SSLContext | None:
    """The context a TCP listener serves with, or None when TLS is off."""
    s = settings()
    return None if s is None else _context(s, server=True)


def client_context() -> ssl.SSLContext | None:
    """The context every outgoing TCP connection uses, or None when TLS is off."""
    s = settings()
    return None if s is None else _context(s, server=False)


@functools.lru_cache(maxsize=8)  # keyed by the files: a test may start clusters with and without TLS
def _context(files: tuple[str, str, str], *, server: bool) -> ssl.SSLContext:
    cert, key, ca = files
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert, key)
        ctx.load_verify_locations(ca)
    except (ssl.SSLError, OSError) as e:
        raise TlsConfigError(f"The TLS files cannot be used ({e}): RUNTIME_TLS_SERVER_CERT and "
                             "RUNTIME_TLS_SERVER_KEY must be a PEM certificate and its key, RUNTIME_TLS_CA_CERT "
                             "the PEM certificate of the authority that signed it.") from None
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED  # mutual: a server too wants the peer's certificate
    return ctx


def scheme() -> str:
    """The scheme of the dashboard's and the metrics endpoints' URLs."""
    return "https" if enabled() else "http"


def strip_scheme(url: str) -> str:
    return url.removeprefix("https://").removeprefix("http://")


def wrap_error(address: str, exc: BaseException) -> PeerRefused:
    """What a failed connection to a TCP peer means, for the user: TLS on one side only, or a
    certificate the other side's CA did not sign."""
    if enabled():
        return PeerRefused(f"The TLS handshake with {address} failed ({exc}). Either that server does not use "
                               "TLS (then unset RUNTIME_USE_TLS here), or its certificate and ours are not signed by "
                               f"the same authority (check RUNTIME_TLS_CA_CERT).")
    return PeerRefused(f"{address} closed the connection before answering ({exc}). If the cluster uses TLS, set "
                           f"{VARIABLES} here as on the cluster; otherwise check the cluster token.")
