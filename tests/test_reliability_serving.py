"""gRPC requests from hostile or broken clients (property-based): proper status codes, and the server survives.

Random bytes to every method, and random field values for each request message. Allowed answers: OK,
INVALID_ARGUMENT, NOT_FOUND (unknown user), FAILED_PRECONDITION (a reload that fails); never UNKNOWN or
INTERNAL (an exception the server did not expect). After the storm the server is healthy and answers a
good request exactly as before.
"""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from client.serving import recommend_pb2 as pb
from client.serving.client import RecommenderClient
from client.serving.server import SERVICE, start_server
from client.serving.source import ModelSource

Code = grpc.StatusCode
ALLOWED = {Code.OK, Code.INVALID_ARGUMENT, Code.NOT_FOUND, Code.FAILED_PRECONDITION}
FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def served(small_run):
    running = start_server(ModelSource(run=small_run).load)
    client = RecommenderClient(f"127.0.0.1:{running.port}")
    yield running, client
    client.close()
    running.stop(0)


def status(call, payload) -> Code:
    try:
        call(payload, timeout=30)
    except grpc.RpcError as err:
        return err.code()
    return Code.OK


@FUZZ
@given(method=st.sampled_from(["Recommend", "RecommendCold", "ReloadModel"]), payload=st.binary(max_size=300))
def test_random_bytes_get_a_proper_status(served, method, payload):
    _, client = served
    call = client.channel.unary_unary(f"/{SERVICE}/{method}")  # raw bytes in, raw bytes out
    assert status(call, payload) in ALLOWED


def _text(known: list[str]) -> st.SearchStrategy[str]:
    return st.one_of(st.text(max_size=40), st.sampled_from(known), st.text("0123456789abcdef", min_size=32,
                                                                            max_size=32))


FLOATS = st.floats(width=64)
INT32 = st.integers(-(2**31), 2**31 - 1)


@FUZZ
@given(data=st.data())
def test_random_request_fields_get_a_proper_status(served, data):
    running, client = served
    rec = running.service.current
    users, items = list(rec.user_ids[:5]), list(rec.item_ids[:20])
    if data.draw(st.booleans()):
        fields = {"user": data.draw(_text(users)), "k": data.draw(INT32), "diversity": data.draw(FLOATS),
                  "popularity_penalty": data.draw(FLOATS)}
        if data.draw(st.booleans()):
            fields["exclude_seen"] = data.draw(st.booleans())
        method, request = "Recommend", pb.RecommendRequest(**fields)
    else:
        fields = {"interactions": data.draw(st.lists(_text(items), max_size=8)), "k": data.draw(INT32),
                  "diversity": data.draw(FLOATS), "popularity_penalty": data.draw(FLOATS)}
        method, request = "RecommendCold", pb.RecommendColdRequest(**fields)
    call = client.channel.unary_unary(f"/{SERVICE}/{method}")
    assert status(call, request.SerializeToString()) in ALLOWED


def test_the_server_survives_the_fuzzing(served):
    running, client = served
    health = health_pb2_grpc.HealthStub(client.channel)
    assert health.Check(health_pb2.HealthCheckRequest(service=SERVICE)).status == health_pb2.HealthCheckResponse.SERVING
    rec = running.service.current
    reply = client.recommend(rec.user_ids[0], 10)
    assert [i for i, _ in reply.items] == list(rec.item_ids[rec.recommend([0], 10).items[0]])
