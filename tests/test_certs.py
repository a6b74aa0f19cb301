"""`fedrec certs`: CA, SuperLink certificate (SANs), SuperNode keys (EC P-384, OpenSSH), 0600, no overwrite."""

from __future__ import annotations

import ipaddress
import socket
import ssl
import threading

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from typer.testing import CliRunner

from deploy.certs import CertPaths, create_ca_and_server, create_node_keys
from fedrec.cli import app
from shared.errors import FedrecError


def mode(path) -> int:
    return path.stat().st_mode & 0o777


def test_ca_and_superlink_certificate(tmp_path):
    paths = CertPaths(tmp_path / "certs")
    create_ca_and_server(paths, ["127.0.0.1", "localhost", "superlink.example.org"], days=30)
    ca = x509.load_pem_x509_certificate(paths.ca_cert.read_bytes())
    server = x509.load_pem_x509_certificate(paths.server_cert.read_bytes())
    server.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert sans.get_values_for_type(x509.DNSName) == ["localhost", "superlink.example.org"]
    eku = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert 29 <= (server.not_valid_after_utc - server.not_valid_before_utc).days <= 31
    key = serialization.load_pem_private_key(paths.server_key.read_bytes(), password=None)
    assert key.public_key().public_numbers() == server.public_key().public_numbers()
    for path in (paths.ca_cert, paths.ca_key, paths.server_cert, paths.server_key):
        assert mode(path) == 0o600
    assert mode(paths.root) == 0o700


def test_tls_handshake_succeeds_with_the_ca_and_fails_with_another(tmp_path):
    paths, other = CertPaths(tmp_path / "a"), CertPaths(tmp_path / "b")
    create_ca_and_server(paths, ["127.0.0.1"])
    create_ca_and_server(other, ["127.0.0.1"])
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(paths.server_cert, paths.server_key)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve(n: int) -> None:
        for _ in range(n):
            conn, _ = listener.accept()
            try:
                with server_ctx.wrap_socket(conn, server_side=True) as tls:
                    tls.sendall(b"ok")
            except (ssl.SSLError, OSError):
                pass

    thread = threading.Thread(target=serve, args=(2,), daemon=True)
    thread.start()
    good = ssl.create_default_context(cafile=str(paths.ca_cert))
    with socket.create_connection(("127.0.0.1", port)) as raw, good.wrap_socket(raw, server_hostname="127.0.0.1") as s:
        assert s.recv(2) == b"ok"
    bad = ssl.create_default_context(cafile=str(other.ca_cert))
    with socket.create_connection(("127.0.0.1", port)) as raw, pytest.raises(ssl.SSLCertVerificationError):
        bad.wrap_socket(raw, server_hostname="127.0.0.1")
    thread.join(timeout=10)
    listener.close()


def test_node_keys_are_p384_openssh_pairs(tmp_path):
    paths = CertPaths(tmp_path)
    pubs = create_node_keys(paths, ["edge-1", "edge.2"])
    assert pubs == [paths.node_pub("edge-1"), paths.node_pub("edge.2")]
    for name in ("edge-1", "edge.2"):
        raw = paths.node_key(name).read_bytes()
        assert raw.startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")
        private = serialization.load_ssh_private_key(raw, password=None)
        public = serialization.load_ssh_public_key(paths.node_pub(name).read_bytes())
        assert isinstance(private, ec.EllipticCurvePrivateKey) and private.curve.name == "secp384r1"
        assert private.public_key().public_numbers() == public.public_numbers()
        assert mode(paths.node_key(name)) == mode(paths.node_pub(name)) == 0o600


def test_refuses_to_overwrite_unless_forced_and_rejects_bad_names(tmp_path):
    paths = CertPaths(tmp_path)
    create_ca_and_server(paths, ["127.0.0.1"])
    create_node_keys(paths, ["edge-1"])
    before = paths.ca_key.read_bytes(), paths.node_key("edge-1").read_bytes()
    with pytest.raises(FedrecError, match="refusing to overwrite"):
        create_ca_and_server(paths, ["127.0.0.1"])
    with pytest.raises(FedrecError, match="refusing to overwrite"):
        create_node_keys(paths, ["edge-2", "edge-1"])
    assert not paths.node_key("edge-2").exists()  # nothing is written when anything would be overwritten
    assert (paths.ca_key.read_bytes(), paths.node_key("edge-1").read_bytes()) == before
    create_ca_and_server(paths, ["127.0.0.1"], force=True)
    create_node_keys(paths, ["edge-1"], force=True)
    assert paths.ca_key.read_bytes() != before[0] and paths.node_key("edge-1").read_bytes() != before[1]
    for bad in (["../escape"], ["a b"], ["x", "x"], [""]):
        with pytest.raises(FedrecError):
            create_node_keys(paths, bad)
    with pytest.raises(FedrecError, match="neither an IP"):
        create_ca_and_server(CertPaths(tmp_path / "n"), ["bad_host!"])


def test_cli(tmp_path):
    runner = CliRunner()
    out = tmp_path / "certs"
    ok = runner.invoke(app, ["certs", "create", "--out", str(out), "--node", "edge-1", "--node", "edge-2"])
    assert ok.exit_code == 0, ok.output
    assert "127.0.0.1, localhost" in ok.output and (out / "nodes" / "edge-2.pub").exists()
    again = runner.invoke(app, ["certs", "create", "--out", str(out)])
    assert again.exit_code != 0 and "refusing to overwrite" in str(again.exception)
    added = runner.invoke(app, ["certs", "node", "edge-3", "--out", str(out)])
    assert added.exit_code == 0 and (out / "nodes" / "edge-3").exists()
