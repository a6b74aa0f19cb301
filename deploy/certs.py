"""TLS certificates and SuperNode authentication keys (``fedrec certs``).

Layout of a certificate directory (every file 0600, the directory 0700)::

    ca.crt, ca.key              the federation's CA (keep ca.key offline once done)
    superlink.crt, superlink.key  the SuperLink's server certificate (SANs: --host values)
    nodes/<name>, nodes/<name>.pub  a SuperNode's EC P-384 key pair in OpenSSH format
    clients/<name>.crt, .key    a client certificate (clientAuth) for ``fedrec serve --client-ca``

``flower-supernode --auth-supernode-private-key`` reads the private key with
``load_ssh_private_key``, so node keys must be OpenSSH; ``flwr supernode register``
takes the ``.pub`` file.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from shared.atomic import atomic_write_bytes
from shared.errors import FedrecError

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
HOST = re.compile(rf"^(?=.{{1,253}}$){LABEL}(\.{LABEL})*$")


@dataclass(frozen=True)
class CertPaths:
    """Where the files of one certificate directory live."""

    root: Path

    @property
    def ca_cert(self) -> Path:
        return self.root / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.root / "ca.key"

    @property
    def server_cert(self) -> Path:
        return self.root / "superlink.crt"

    @property
    def server_key(self) -> Path:
        return self.root / "superlink.key"

    def node_key(self, name: str) -> Path:
        return self.root / "nodes" / name

    def node_pub(self, name: str) -> Path:
        return self.root / "nodes" / f"{name}.pub"

    def client_cert(self, name: str) -> Path:
        return self.root / "clients" / f"{name}.crt"

    def client_key(self, name: str) -> Path:
        return self.root / "clients" / f"{name}.key"


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        if not HOST.match(host):
            raise FedrecError(f"--host {host!r} is neither an IP address nor a DNS name") from None
        return x509.DNSName(host)


def _check_names(nodes: list[str]) -> None:
    bad = [n for n in nodes if not NAME.match(n)]
    if bad:
        raise FedrecError(f"node name(s) {bad} invalid: use letters, digits, '.', '_' or '-' (max 63)")
    if len(set(nodes)) != len(nodes):
        raise FedrecError("node names must be unique")


def _refuse_existing(paths: list[Path], force: bool) -> None:
    existing = [str(p) for p in paths if p.exists()]
    if existing and not force:
        raise FedrecError(f"refusing to overwrite {', '.join(existing)} (use --force)")


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    atomic_write_bytes(path, data, mode=0o600)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _builder(subject: x509.Name, issuer: x509.Name, public, days: int) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(public)
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days)))


def create_ca_and_server(paths: CertPaths, hosts: list[str], *, days: int = 365, force: bool = False) -> None:
    """A new CA and a SuperLink certificate for ``hosts`` (its SANs), signed by it."""
    if not hosts:
        raise FedrecError("give at least one --host for the SuperLink certificate")
    if days < 1:
        raise FedrecError("--days must be >= 1")
    sans = [_san(h) for h in hosts]
    _refuse_existing([paths.ca_cert, paths.ca_key, paths.server_cert, paths.server_key], force)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedrec federation CA")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        _builder(ca_name, ca_name, ca_key.public_key(), days * 10)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    server_key = ec.generate_private_key(ec.SECP384R1())
    server_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])])
    server_cert = (
        _builder(server_name, ca_name, server_key.public_key(), days)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=False, crl_sign=False,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(server_key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    _write(paths.ca_key, _pem_key(ca_key))
    _write(paths.ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM))
    _write(paths.server_key, _pem_key(server_key))
    _write(paths.server_cert, server_cert.public_bytes(serialization.Encoding.PEM))


def create_node_keys(paths: CertPaths, names: list[str], *, force: bool = False) -> list[Path]:
    """An EC P-384 key pair per SuperNode (OpenSSH private key + ``.pub``); returns the ``.pub`` paths."""
    _check_names(names)
    _refuse_existing([p for n in names for p in (paths.node_key(n), paths.node_pub(n))], force)
    pubs = []
    for name in names:
        key = ec.generate_private_key(ec.SECP384R1())
        private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                    serialization.NoEncryption())
        public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        _write(paths.node_key(name), private)
        _write(paths.node_pub(name), public + f" fedrec-node-{name}\n".encode())
        pubs.append(paths.node_pub(name))
    return pubs


def issue_client_cert(paths: CertPaths, name: str, *, days: int = 365, force: bool = False) -> tuple[Path, Path]:
    """A client certificate (CN ``name``, extendedKeyUsage clientAuth) signed by the CA; returns (cert, key)."""
    _check_names([name])
    if days < 1:
        raise FedrecError("--days must be >= 1")
    _refuse_existing([paths.client_cert(name), paths.client_key(name)], force)
    try:
        ca_cert = x509.load_pem_x509_certificate(paths.ca_cert.read_bytes())
        ca_key = serialization.load_pem_private_key(paths.ca_key.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise FedrecError(f"{paths.root}: cannot load the CA (ca.crt, ca.key) to sign with: {exc}") from None
    key = ec.generate_private_key(ec.SECP384R1())
    cert = (
        _builder(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]), ca_cert.subject, key.public_key(), days)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=False, crl_sign=False,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    _write(paths.client_key(name), _pem_key(key))
    _write(paths.client_cert(name), cert.public_bytes(serialization.Encoding.PEM))
    return paths.client_cert(name), paths.client_key(name)


def describe(paths: CertPaths) -> dict[str, str]:
    """Subject, SANs and expiry of the SuperLink certificate (for the CLI summary)."""
    cert = x509.load_pem_x509_certificate(paths.server_cert.read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    names = [str(v) for v in sans.get_values_for_type(x509.IPAddress)] + sans.get_values_for_type(x509.DNSName)
    return {"subject": cert.subject.rfc4514_string(), "sans": ", ".join(names),
            "expires": cert.not_valid_after_utc.isoformat(timespec="minutes")}
