"""Per-run credentials of a local federation: a TLS chain and SuperNode keys.

``write_tls`` makes a self-signed CA (EC P-256, valid for a day) and a server
certificate it signs for the given hosts (SANs: IP addresses and names), as PEM files.
The SuperLink serves with ``--ssl-certfile``/``--ssl-keyfile``/``--ssl-ca-certfile``;
SuperNodes and ``flwr`` verify it with ``--root-certificates``/``root-certificates``.

``write_node_key`` makes one SuperNode's authentication key pair: an EC SECP384R1 key
in OpenSSH format (what ``flower-supernode --auth-supernode-private-key`` reads) and its
OpenSSH public key (what ``flwr supernode register`` allow-lists on the SuperLink).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    cert: Path
    key: Path


@dataclass(frozen=True)
class NodeKey:
    private: Path
    public: Path


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedlm"), x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _write(path: Path, data: bytes, *, private: bool = False) -> Path:
    path.write_bytes(data)
    if private:
        path.chmod(0o600)
    return path


def write_tls(folder: Path, *, hosts: tuple[str, ...] = ("127.0.0.1", "localhost"), days: int = 1) -> TlsFiles:
    """A CA and a server certificate for ``hosts`` under ``folder`` (``ca.crt``, ``server.pem``, ``server.key``)."""
    folder.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc)
    until = now + dt.timedelta(days=days)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder().subject_name(_name("fedlm run CA")).issuer_name(_name("fedlm run CA"))
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(until)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = []
    for h in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            sans.append(x509.DNSName(h))
    cert = (
        x509.CertificateBuilder().subject_name(_name(hosts[0])).issuer_name(ca.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(until)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    return TlsFiles(
        ca=_write(folder / "ca.crt", ca.public_bytes(pem)),
        cert=_write(folder / "server.pem", cert.public_bytes(pem)),
        key=_write(folder / "server.key", key.private_bytes(pem, serialization.PrivateFormat.TraditionalOpenSSL,
                                                            serialization.NoEncryption()), private=True),
    )


def write_node_key(folder: Path, name: str) -> NodeKey:
    """``NAME`` (OpenSSH private key) and ``NAME.pub`` (OpenSSH public key) under ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return NodeKey(private=_write(folder / name, private, private=True), public=_write(folder / f"{name}.pub", public + b"\n"))


__all__ = ["NodeKey", "TlsFiles", "write_node_key", "write_tls"]
