"""Who `fedrec serve` lets in: TLS off loopback or nothing starts; with --client-ca only certificate holders."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from client.serving.client import RecommenderClient
from client.serving.server import InsecureServingError, is_loopback, start_server
from client.serving.source import ModelSource
from deploy.certs import CertPaths, create_ca_and_server, issue_client_cert
from shared.errors import FedrecError

Code = grpc.StatusCode


@pytest.fixture(scope="module")
def run_dir(small_run) -> Path:
    return small_run


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> tuple[CertPaths, CertPaths]:
    """The federation's certificate directory (CA, a server cert for 127.0.0.1, client 'analyst'), and a stranger's."""
    root = tmp_path_factory.mktemp("pki")
    ours, theirs = CertPaths(root / "federation"), CertPaths(root / "stranger")
    for paths, client in ((ours, "analyst"), (theirs, "intruder")):
        create_ca_and_server(paths, ["127.0.0.1", "localhost"], days=1)
        issue_client_cert(paths, client, days=1)
    return ours, theirs


@pytest.fixture(scope="module")
def mtls(run_dir, pki):
    ours, _ = pki
    running = start_server(ModelSource(run=run_dir).load, tls_cert=ours.server_cert, tls_key=ours.server_key,
                           client_ca=ours.ca_cert)
    yield running
    running.stop(0)


def listening_sockets() -> set[str]:
    """Inodes of the TCP sockets this process holds in LISTEN state (Linux /proc)."""
    if not Path("/proc/net/tcp").exists():
        pytest.skip("needs Linux /proc")
    mine = set()
    for fd in Path("/proc/self/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            mine.add(target[len("socket:["):-1])
    listening = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if Path(table).exists():
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A":  # TCP_LISTEN
                    listening.add(fields[9])
    return mine & listening


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        return s.getsockname()[1]


def test_loopback_detection():
    for host in ("127.0.0.1", "127.8.9.10", "::1", "[::1]", "localhost", "LocalHost"):
        assert is_loopback(host), host
    for host in ("0.0.0.0", "::", "[::]", "", "10.0.0.5", "192.168.1.2", "node.example.org", "localhost.evil.org"):
        assert not is_loopback(host), host


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3"])
def test_non_loopback_without_tls_is_refused_and_nothing_listens(run_dir, host):
    loaded = []

    def loader():
        loaded.append(1)
        return ModelSource(run=run_dir).load()

    before = listening_sockets()
    with pytest.raises(InsecureServingError, match="--tls-cert/--tls-key"):
        start_server(loader, host=host, port=0)
    assert listening_sockets() == before and not loaded  # nothing bound, not even the model was loaded
    port = free_port()
    with pytest.raises(InsecureServingError):
        start_server(loader, host="0.0.0.0", port=port)
    with socket.socket() as probe, pytest.raises(ConnectionRefusedError):
        probe.connect(("127.0.0.1", port))
    # the probe can see a listener: a loopback server (plain text allowed there) shows up
    running = start_server(loader, host="127.0.0.1", port=0)
    try:
        assert listening_sockets() - before
    finally:
        running.stop(0)


def test_non_loopback_with_tls_starts(run_dir, pki):
    ours, _ = pki
    running = start_server(ModelSource(run=run_dir).load, host="0.0.0.0", tls_cert=ours.server_cert,
                           tls_key=ours.server_key, client_ca=ours.root)  # a `fedrec certs` directory works too
    try:
        cert, key = ours.client_cert("analyst"), ours.client_key("analyst")
        with RecommenderClient(f"127.0.0.1:{running.port}", ca=ours.ca_cert, client_cert=cert, client_key=key) as c:
            assert c.health() == "SERVING"
    finally:
        running.stop(0)


def test_client_certificate_signed_by_the_ca_gets_recommendations(mtls, pki):
    ours, _ = pki
    rec = mtls.service.current
    with RecommenderClient(f"127.0.0.1:{mtls.port}", ca=ours.ca_cert, client_cert=ours.client_cert("analyst"),
                           client_key=ours.client_key("analyst")) as client:
        reply = client.recommend(rec.user_ids[0], 5)
    assert reply.user == rec.user_ids[0] and len(reply.items) == 5 and reply.model_version == rec.version


def test_client_without_certificate_is_refused(mtls, pki):
    ours, _ = pki
    user = mtls.service.current.user_ids[0]
    with RecommenderClient(f"127.0.0.1:{mtls.port}", ca=ours.ca_cert, timeout=5) as client:
        with pytest.raises(grpc.RpcError) as err:
            client.recommend(user, 5)
        assert err.value.code() == Code.UNAVAILABLE
        with pytest.raises(grpc.RpcError) as err:
            client.health()
        assert err.value.code() == Code.UNAVAILABLE
    with RecommenderClient(f"127.0.0.1:{mtls.port}", timeout=5) as plain, pytest.raises(grpc.RpcError) as err:
        plain.recommend(user, 5)
    assert err.value.code() == Code.UNAVAILABLE


def test_client_certificate_from_another_ca_is_refused(mtls, pki):
    ours, theirs = pki
    user = mtls.service.current.user_ids[0]
    stranger = {"client_cert": theirs.client_cert("intruder"), "client_key": theirs.client_key("intruder")}
    with (RecommenderClient(f"127.0.0.1:{mtls.port}", ca=ours.ca_cert, timeout=5, **stranger) as c,
          pytest.raises(grpc.RpcError) as err):
        c.recommend(user, 5)
    assert err.value.code() == Code.UNAVAILABLE


def test_issued_client_certificate(pki):
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature
    from cryptography.x509.oid import ExtendedKeyUsageOID

    ours, theirs = pki
    cert = x509.load_pem_x509_certificate(ours.client_cert("analyst").read_bytes())
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(ours.ca_cert.read_bytes()))
    with pytest.raises((InvalidSignature, ValueError)):  # the stranger's CA did not sign it
        cert.verify_directly_issued_by(x509.load_pem_x509_certificate(theirs.ca_cert.read_bytes()))
    assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.CLIENT_AUTH]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for path in (ours.client_cert("analyst"), ours.client_key("analyst")):
        assert path.stat().st_mode & 0o777 == 0o600
    with pytest.raises(FedrecError, match="refusing to overwrite"):
        issue_client_cert(ours, "analyst")


def serve_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fedrec.cli", "serve", *args], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_cli_refuses_client_ca_without_tls_and_plain_text_off_loopback(run_dir, pki):
    ours, _ = pki
    no_tls = serve_cli("--run", str(run_dir), "--port", "0", "--client-ca", str(ours.ca_cert))
    assert no_tls.returncode == 2, no_tls.stderr
    assert "--client-ca needs TLS" in no_tls.stderr and "--tls-cert" in no_tls.stderr
    assert "serving" not in no_tls.stderr
    exposed = serve_cli("--run", str(run_dir), "--host", "0.0.0.0", "--port", "0")
    assert exposed.returncode == 2, exposed.stderr
    assert "without TLS" in exposed.stderr and "--tls-cert/--tls-key" in exposed.stderr
    assert "serving" not in exposed.stderr
