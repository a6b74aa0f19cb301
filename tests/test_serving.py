"""gRPC serving end to end on 127.0.0.1: normal calls, every bad request, health, TLS, reload under load."""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import grpc
import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc

from client.serving.client import RecommenderClient
from client.serving.server import SERVICE, start_server
from client.serving.source import ModelSource
from shared.errors import FedrecError
from shared.rundir import RunDirectory, load_model_payload
from tests.support import MODEL_AVERAGING, serving, train_small

SMALL = {**MODEL_AVERAGING, "data.synthetic-users": 120, "data.synthetic-items": 200, "model.name": "gmf",
         "train.epochs": 2, "eval.patience": 0,
         "eval.full-rank": False, "train.lr": 0.01}
Code = grpc.StatusCode


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return train_small(tmp_path_factory.mktemp("serving-run"), SMALL)


@pytest.fixture(scope="module")
def served(run_dir):
    running = start_server(ModelSource(run=run_dir).load)
    client = RecommenderClient(f"127.0.0.1:{running.port}")
    yield running, client
    client.close()
    running.stop(0)


def test_recommend_over_grpc_equals_the_in_process_lists(served):
    running, client = served
    rec = running.service.current
    for row in (0, 7, 42):
        user = rec.user_ids[row]
        local = rec.recommend(np.array([row]), 10, diversity=0.3)
        reply = client.recommend(user, 10, diversity=0.3)
        assert reply.user == user and reply.model_version == rec.version
        assert [i for i, _ in reply.items] == list(rec.item_ids[local.items[0]])
        np.testing.assert_allclose([s for _, s in reply.items], local.scores[0], rtol=1e-6)
    seen = set(rec.item_ids[rec.seen_items[rec.seen_indptr[0] : rec.seen_indptr[1]]])
    assert not seen & {i for i, _ in client.recommend(rec.user_ids[0], 50).items}  # exclude_seen defaults to true
    assert seen & {i for i, _ in client.recommend(rec.user_ids[0], 50, exclude_seen=False).items}


def test_approximate_serving_answers_the_index_lists_and_re_ranks_exactly(run_dir):
    running = start_server(ModelSource(run=run_dir).load, approximate=True)
    client = RecommenderClient(f"127.0.0.1:{running.port}")
    try:
        rec = running.service.current
        assert "index" in rec._derived  # built before the first request
        for row in (0, 7):
            user = rec.user_ids[row]
            approx = rec.recommend(np.array([row]), 10, approximate=True)
            assert [i for i, _ in client.recommend(user, 10).items] == list(rec.item_ids[approx.items[0]])
            exact = rec.recommend(np.array([row]), 10, diversity=0.3)
            assert [i for i, _ in client.recommend(user, 10, diversity=0.3).items] == list(rec.item_ids[exact.items[0]])
    finally:
        client.close()
        running.stop(0)


def test_approximate_serving_of_a_model_without_an_index_is_refused_before_binding(tmp_path):
    mlp = train_small(tmp_path / "mlp", {**SMALL, "model.name": "mlp", "train.epochs": 1})
    with pytest.raises(FedrecError, match="approximate serving: approximate top-K needs a GMF model"):
        start_server(ModelSource(run=mlp).load, approximate=True)


def test_recommend_cold_over_grpc(served):
    running, client = served
    rec = running.service.current
    given = list(rec.item_ids[[3, 9, 27, 81]])
    reply = client.recommend_cold(given, 15)
    assert reply.user == "" and len(reply.items) == 15 and not set(given) & {i for i, _ in reply.items}
    local = rec.recommend_cold(np.array([3, 9, 27, 81]), 15)
    assert [i for i, _ in reply.items] == list(rec.item_ids[local.items[0]])


KNOWN = "<known>"
BAD_REQUESTS = [
    ("Recommend", {"user": "", "k": 10}, Code.INVALID_ARGUMENT),
    ("Recommend", {"user": "not-a-pseudonym", "k": 10}, Code.INVALID_ARGUMENT),
    ("Recommend", {"user": "ABCDEF0123456789ABCDEF0123456789", "k": 10}, Code.INVALID_ARGUMENT),
    ("Recommend", {"user": "0" * 33, "k": 10}, Code.INVALID_ARGUMENT),
    ("Recommend", {"user": "0" * 32, "k": 10}, Code.NOT_FOUND),
    ("Recommend", {"user": KNOWN, "k": 0}, Code.INVALID_ARGUMENT),
    ("Recommend", {"user": KNOWN, "k": -5}, Code.INVALID_ARGUMENT),
    ("Recommend", {"user": KNOWN, "k": 1001}, Code.INVALID_ARGUMENT),
    ("Recommend", {"user": KNOWN, "k": 10, "diversity": -0.1}, Code.INVALID_ARGUMENT),
    ("Recommend", {"user": KNOWN, "k": 10, "diversity": 1.5}, Code.INVALID_ARGUMENT),
    ("Recommend", {"user": KNOWN, "k": 10, "diversity": float("nan")}, Code.INVALID_ARGUMENT),
    ("Recommend", {"user": KNOWN, "k": 10, "popularity_penalty": -1.0}, Code.INVALID_ARGUMENT),
    ("Recommend", {"user": KNOWN, "k": 10, "popularity_penalty": float("inf")}, Code.INVALID_ARGUMENT),
    ("RecommendCold", {"interactions": [], "k": 10}, Code.INVALID_ARGUMENT),
    ("RecommendCold", {"interactions": ["f" * 32], "k": 10}, Code.INVALID_ARGUMENT),
    ("RecommendCold", {"interactions": ["xyz"], "k": 10}, Code.INVALID_ARGUMENT),
    ("RecommendCold", {"interactions": [KNOWN] * 1001, "k": 10}, Code.INVALID_ARGUMENT),
    ("RecommendCold", {"interactions": [KNOWN], "k": 0}, Code.INVALID_ARGUMENT),
    ("RecommendCold", {"interactions": [KNOWN], "k": 10, "diversity": 2.0}, Code.INVALID_ARGUMENT),
]


@pytest.mark.parametrize(("method", "fields", "code"), BAD_REQUESTS)
def test_bad_requests_get_proper_status_codes_and_the_server_keeps_serving(served, method, fields, code):
    from client.serving import recommend_pb2 as pb
    from client.serving import recommend_pb2_grpc as pb_grpc

    running, client = served
    rec = running.service.current
    fields = dict(fields)
    if fields.get("user") == KNOWN:
        fields["user"] = rec.user_ids[0]
    if "interactions" in fields:
        fields["interactions"] = [rec.item_ids[0] if i == KNOWN else i for i in fields["interactions"]]
    stub = pb_grpc.RecommenderStub(client.channel)
    request = (pb.RecommendRequest if method == "Recommend" else pb.RecommendColdRequest)(**fields)
    with pytest.raises(grpc.RpcError) as err:
        getattr(stub, method)(request, timeout=10)
    assert err.value.code() == code, err.value.details()
    assert client.health() == "SERVING" and len(client.recommend(rec.user_ids[1], 3).items) == 3


@pytest.mark.parametrize("payload", [b"\xff\xff\xff", b"\x0a\x02\xc3\x28"])  # garbage; invalid UTF-8 in a string
def test_undecodable_bytes_are_invalid_argument(served, payload):
    _, client = served
    call = client.channel.unary_unary(f"/{SERVICE}/Recommend")  # raw bytes in, raw bytes out
    with pytest.raises(grpc.RpcError) as err:
        call(payload, timeout=10)
    assert err.value.code() == Code.INVALID_ARGUMENT


def test_standard_health_service(served):
    _, client = served
    assert client.health() == "SERVING" and client.health(SERVICE) == "SERVING"
    stub = health_pb2_grpc.HealthStub(client.channel)
    with pytest.raises(grpc.RpcError) as err:
        stub.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=10)
    assert err.value.code() == Code.NOT_FOUND


def make_pki(tmp_path):
    """A throwaway CA and a server certificate for 127.0.0.1 (PEM files in tmp_path)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedrec test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
          .not_valid_after(now + datetime.timedelta(hours=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "node")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1)).not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    files = {"ca.pem": ca.public_bytes(serialization.Encoding.PEM), "cert.pem": cert.public_bytes(
        serialization.Encoding.PEM), "key.pem": key.private_bytes(serialization.Encoding.PEM,
                                                                  serialization.PrivateFormat.PKCS8,
                                                                  serialization.NoEncryption())}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    return tmp_path / "ca.pem", tmp_path / "cert.pem", tmp_path / "key.pem"


def test_tls_end_to_end(run_dir, tmp_path):
    ca, cert, key = make_pki(tmp_path)
    running = start_server(ModelSource(run=run_dir).load, tls_cert=cert, tls_key=key)
    try:
        user = running.service.current.user_ids[0]
        with RecommenderClient(f"127.0.0.1:{running.port}", ca=ca) as secure:
            assert secure.health() == "SERVING" and len(secure.recommend(user, 5).items) == 5
        with RecommenderClient(f"127.0.0.1:{running.port}", timeout=3) as plain, pytest.raises(grpc.RpcError) as err:
            plain.recommend(user, 5)
        assert err.value.code() == Code.UNAVAILABLE
    finally:
        running.stop(0)


def perturbed_model(run_dir, target):
    """Write a different but valid model file (item embeddings scaled) to ``target`` atomically."""
    payload = load_model_payload(run_dir / "model.pt")
    payload["state"]["item_emb.gmf.weight"] = payload["state"]["item_emb.gmf.weight"].flip(0)
    RunDirectory(target.parent).save_model(target.name, {k: v for k, v in payload.items() if k != "format"})


def test_reload_under_load_drops_no_request(run_dir, tmp_path):
    live = tmp_path / "live"
    shutil.copytree(run_dir, live)
    running = start_server(ModelSource(run=live).load, max_workers=4)
    users = list(running.service.current.user_ids[:20])
    old = running.service.current.version
    versions, sent, failures, stop = [], [], [], threading.Event()

    def hammer() -> None:
        with RecommenderClient(f"127.0.0.1:{running.port}", timeout=120) as client:  # a loaded CI box is slow
            i = 0
            while not stop.is_set():
                try:
                    sent_at = time.monotonic()
                    reply = client.recommend(users[i % len(users)], 10, diversity=0.2)
                    versions.append(reply.model_version)
                    sent.append((sent_at, reply.model_version))
                    assert len(reply.items) == 10
                except Exception as exc:  # any failure is a test failure
                    failures.append(repr(exc))
                i += 1

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    try:
        for t in threads:
            t.start()
        while len(versions) < 40:
            time.sleep(0.01)
        perturbed_model(run_dir, live / "model.pt")
        with RecommenderClient(f"127.0.0.1:{running.port}") as admin:
            new, previous = admin.reload()
            swapped_at = time.monotonic()
            n_at_swap = len(versions)
            while len(versions) < n_at_swap + 40:
                time.sleep(0.01)
            (live / "model.pt").write_bytes(b"not a model")  # a broken file: reload fails, old model kept
            with pytest.raises(grpc.RpcError) as err:
                admin.reload()
            assert err.value.code() == Code.FAILED_PRECONDITION
            assert admin.recommend(users[0], 3).model_version == new
    finally:
        stop.set()
        for t in threads:
            t.join()
        running.stop(0)
    assert not failures, failures[:3]
    assert previous == old != new and set(versions) == {old, new}
    # every request sent after the swap is answered by the new model (those in flight may finish on the old one)
    assert {v for at, v in sent if at > swapped_at} == {new}


def test_fedrec_serve_cli_reloads_on_sighup_and_stops_on_sigterm(run_dir, tmp_path):
    live = tmp_path / "live"
    shutil.copytree(run_dir, live)
    with serving([sys.executable, "-m", "fedrec.cli", "serve", "--run", str(live), "--port", "0"],
                 stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                 env={**os.environ, "OMP_NUM_THREADS": "1"}) as (proc, target), RecommenderClient(target) as client:
        user = ModelSource(run=live).load().user_ids[0]
        first = client.recommend(user, 5).model_version
        perturbed_model(run_dir, live / "model.pt")
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 60
        while client.recommend(user, 5).model_version == first and time.monotonic() < deadline:
            time.sleep(0.1)
        assert client.recommend(user, 5).model_version != first
