"""Certificate authorities and certificates for tests of mutual TLS (runtime/rpc/tls.py)."""

from __future__ import annotations

import datetime
import ipaddress
import os

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write(path: str, data: bytes, private: bool = False) -> str:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return path


def make_ca(directory: str, name: str = "ca") -> tuple[str, ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A self-signed authority; returns (its PEM path, key, certificate)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(_name(f"orrery test {name}")).issuer_name(_name(f"orrery test {name}"))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    path = _write(os.path.join(directory, f"{name}.pem"), cert.public_bytes(serialization.Encoding.PEM))
    return path, key, cert


def make_cert(directory: str, ca: tuple, name: str = "node", ips: tuple[str, ...] = ("127.0.0.1",)) -> tuple[str, str]:
    """A certificate signed by `ca` (from make_ca) for these IPs and localhost: (cert, key) paths."""
    _ca_path, ca_key, ca_cert = ca
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    san = [x509.DNSName("localhost")] + [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    cert = (x509.CertificateBuilder().subject_name(_name(f"orrery {name}")).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName(san), critical=False)
            .sign(ca_key, hashes.SHA256()))
    cert_path = _write(os.path.join(directory, f"{name}.crt"), cert.public_bytes(serialization.Encoding.PEM))
    key_path = _write(os.path.join(directory, f"{name}.key"), key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()), private=True)
    return cert_path, key_path


def tls_env(directory: str, ips: tuple[str, ...] = ("127.0.0.1",)) -> dict[str, str]:
    """A new CA and one certificate it signed, as the environment a TLS cluster runs with."""
    ca = make_ca(directory)
    cert, key = make_cert(directory, ca, ips=ips)
    return {"RUNTIME_USE_TLS": "1", "RUNTIME_TLS_SERVER_CERT": cert, "RUNTIME_TLS_SERVER_KEY": key,
            "RUNTIME_TLS_CA_CERT": ca[0]}
