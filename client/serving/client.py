"""A small Python client for ``fedrec serve``.

Errors surface as :class:`grpc.RpcError` with the server's status code
(``NOT_FOUND`` for an unknown user, ``INVALID_ARGUMENT`` for a malformed request).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from client.serving import recommend_pb2 as pb
from client.serving import recommend_pb2_grpc as pb_grpc


@dataclass(frozen=True)
class RecommendResult:
    """One list: ``items`` best first as (item pseudonym, score) pairs, and the model version."""

    user: str
    items: list[tuple[str, float]]
    model_version: str


class RecommenderClient:
    """A channel to one serving node; plain-text, or TLS when ``ca`` (PEM path) is given.

    ``client_cert`` and ``client_key`` (PEM paths, both or neither, TLS only) present a client certificate to a
    server started with ``--client-ca``.
    """

    def __init__(self, target: str, *, ca: Path | str | None = None, timeout: float = 10.0,
                 server_name: str | None = None, client_cert: Path | str | None = None,
                 client_key: Path | str | None = None) -> None:
        if (client_cert is None) != (client_key is None):
            raise ValueError("a client certificate needs both client_cert and client_key")
        if client_cert is not None and ca is None:
            raise ValueError("a client certificate needs TLS: give ca as well")
        if ca is not None:
            chain = Path(client_cert).read_bytes() if client_cert is not None else None
            key = Path(client_key).read_bytes() if client_key is not None else None
            creds = grpc.ssl_channel_credentials(root_certificates=Path(ca).read_bytes(), private_key=key,
                                                 certificate_chain=chain)
            options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
            self.channel = grpc.secure_channel(target, creds, options=options)
        else:
            self.channel = grpc.insecure_channel(target)
        self.timeout = timeout
        self._stub = pb_grpc.RecommenderStub(self.channel)
        self._health = health_pb2_grpc.HealthStub(self.channel)

    def __enter__(self) -> RecommenderClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.channel.close()

    def recommend(self, user: str, k: int = 10, *, exclude_seen: bool = True, diversity: float = 0.0,
                  popularity_penalty: float = 0.0) -> RecommendResult:
        """Top-``k`` for a user the node knows."""
        reply = self._stub.Recommend(pb.RecommendRequest(user=user, k=k, exclude_seen=exclude_seen,
                                                         diversity=diversity, popularity_penalty=popularity_penalty),
                                     timeout=self.timeout)
        return _result(reply)

    def recommend_cold(self, interactions: list[str], k: int = 10, *, diversity: float = 0.0,
                       popularity_penalty: float = 0.0) -> RecommendResult:
        """Top-``k`` for a new user from the item pseudonyms they interacted with."""
        reply = self._stub.RecommendCold(pb.RecommendColdRequest(interactions=interactions, k=k, diversity=diversity,
                                                                 popularity_penalty=popularity_penalty),
                                         timeout=self.timeout)
        return _result(reply)

    def reload(self) -> tuple[str, str]:
        """Ask the server to reload its model; returns (new version, previous version)."""
        reply = self._stub.ReloadModel(pb.ReloadModelRequest(), timeout=max(self.timeout, 120.0))
        return reply.model_version, reply.previous_version

    def health(self, service: str = "") -> str:
        """The health status name, e.g. ``"SERVING"``."""
        reply = self._health.Check(health_pb2.HealthCheckRequest(service=service), timeout=self.timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Block until the channel is connected (raises ``grpc.FutureTimeoutError``)."""
        grpc.channel_ready_future(self.channel).result(timeout=timeout)


def _result(reply: pb.RecommendReply) -> RecommendResult:
    return RecommendResult(reply.user, [(s.item, s.score) for s in reply.items], reply.model_version)
