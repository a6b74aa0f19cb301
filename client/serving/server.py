"""gRPC glue around :class:`NodeRecommender`: validation, status codes, health, TLS, hot reload.

- Every request field is checked before any work; a bad request gets
  ``INVALID_ARGUMENT`` (malformed pseudonym, k outside 1..1000, λ outside [0, 1],
  negative or non-finite penalty, unknown or too many/few cold interactions) and
  an unknown user ``NOT_FOUND``. An unexpected exception becomes ``INTERNAL``
  (logged); the server never dies on input.
- Hot reload (``ReloadModel`` RPC, or :meth:`RecommenderService.reload` from SIGHUP)
  builds the new recommender completely, then swaps one reference. A request
  reads the reference once, so it runs on the old or the new model, never a mix,
  and no request is dropped or failed by a reload. A failed reload keeps the old
  model (``FAILED_PRECONDITION``).
- Health: the standard ``grpc.health.v1`` service, SERVING for ``""`` and for
  ``fedrec.serving.v1.Recommender``.
- Who may connect: a bind address other than loopback (127.0.0.0/8, ::1,
  ``localhost``) needs TLS, or nothing starts (:class:`InsecureServingError`);
  with ``client_ca`` the server also demands a client certificate signed by
  that CA (mTLS), because a node's lists reveal its users' histories.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import re
import threading
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from client.recommender import MAX_K, NodeRecommender, Recommendations
from client.serving import recommend_pb2 as pb
from client.serving import recommend_pb2_grpc as pb_grpc
from shared.errors import FedrecError

log = logging.getLogger("fedrec.serving")

SERVICE = "fedrec.serving.v1.Recommender"
PSEUDONYM = re.compile(r"[0-9a-f]{32}")
MAX_COLD = 1000
MALFORMED = object()  # what the lenient parser returns for bytes that are not a valid request (grpc reserves None)


class InsecureServingError(FedrecError):
    """A serving configuration that would let in whom it should not (refused before anything binds)."""


class RequestError(Exception):
    """A request the server refuses, with its gRPC status code."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def _invalid(message: str) -> RequestError:
    return RequestError(grpc.StatusCode.INVALID_ARGUMENT, message)


def _guarded(handler: Callable) -> Callable:
    """Map RequestError to its status and anything else to INTERNAL; the RPC thread never raises."""

    @functools.wraps(handler)
    def wrapper(self, request, context: grpc.ServicerContext):
        try:
            if request is MALFORMED:
                raise _invalid("malformed request: not a valid protobuf message of this method")
            return handler(self, request, context)
        except RequestError as exc:
            code, message = exc.code, str(exc)
        except Exception:  # a bug, not a bad request: log it, answer INTERNAL, keep serving
            log.exception("%s failed", handler.__name__)
            code, message = grpc.StatusCode.INTERNAL, "internal error"
        context.abort(code, message)

    return wrapper


def _options(k: int, diversity: float, penalty: float) -> None:
    if not 1 <= k <= MAX_K:
        raise _invalid(f"k must lie in 1..{MAX_K}, got {k}")
    if not 0.0 <= diversity <= 1.0:  # also rejects NaN
        raise _invalid(f"diversity must lie in [0, 1], got {diversity}")
    if not (np.isfinite(penalty) and penalty >= 0.0):
        raise _invalid(f"popularity_penalty must be a finite number >= 0, got {penalty}")


def _pseudonym(value: str, what: str) -> str:
    if not PSEUDONYM.fullmatch(value):
        raise _invalid(f"{what} must be a pseudonym of 32 lowercase hex characters, got {value[:40]!r}")
    return value


def _reply(rec: NodeRecommender, recs: Recommendations, user: str = "") -> pb.RecommendReply:
    valid = recs.items[0] >= 0
    names, scores = rec.item_ids[recs.items[0][valid]], recs.scores[0][valid]
    return pb.RecommendReply(user=user, model_version=rec.version,
                             items=[pb.ScoredItem(item=i, score=float(s)) for i, s in zip(names, scores, strict=True)])


def _build_index(rec: NodeRecommender) -> NodeRecommender:
    """``rec`` with its IVF index built; a FedrecError if the model has none (not GMF)."""
    try:
        rec.catalog_index()
    except ValueError as exc:
        raise FedrecError(f"approximate serving: {exc}") from None
    return rec


class RecommenderService(pb_grpc.RecommenderServicer):
    """The ``fedrec.serving.v1.Recommender`` service over a swappable recommender."""

    def __init__(self, loader: Callable[[], NodeRecommender], initial: NodeRecommender | None = None, *,
                 approximate: bool = False) -> None:
        self.approximate = approximate  # plain top-K from the IVF index; re-ranked requests stay exact
        self._loader = self._with_index(loader) if approximate else loader
        self._current = initial if initial is not None else self._loader()
        if approximate:
            _build_index(self._current)
        self._reload_lock = threading.Lock()

    @staticmethod
    def _with_index(loader: Callable[[], NodeRecommender]) -> Callable[[], NodeRecommender]:
        def load() -> NodeRecommender:  # the index is built before a (re)loaded model is swapped in
            return _build_index(loader())
        return load

    @property
    def current(self) -> NodeRecommender:
        return self._current

    def reload(self) -> tuple[str, NodeRecommender]:
        """Load from the source, then swap; returns (previous version, new recommender). Raises on failure."""
        with self._reload_lock:
            new = self._loader()
            previous, self._current = self._current.version, new
        log.info("model reloaded: %s -> %s", previous, new.version)
        return previous, new

    @_guarded
    def Recommend(self, request: pb.RecommendRequest, context) -> pb.RecommendReply:
        rec = self._current  # read once: one consistent model for this request
        user = _pseudonym(request.user, "user")
        _options(request.k, request.diversity, request.popularity_penalty)
        row = rec.user_row(user)
        if row is None:
            raise RequestError(grpc.StatusCode.NOT_FOUND, f"user {user} is not known to this node")
        exclude = request.exclude_seen if request.HasField("exclude_seen") else True
        plain = request.diversity == 0 and request.popularity_penalty == 0
        recs = rec.recommend(np.array([row]), request.k, exclude_seen=exclude, diversity=request.diversity,
                             popularity_penalty=request.popularity_penalty, approximate=self.approximate and plain)
        return _reply(rec, recs, user)

    @_guarded
    def RecommendCold(self, request: pb.RecommendColdRequest, context) -> pb.RecommendReply:
        rec = self._current
        _options(request.k, request.diversity, request.popularity_penalty)
        n = len(request.interactions)
        if not 1 <= n <= MAX_COLD:
            raise _invalid(f"interactions must list 1..{MAX_COLD} item pseudonyms, got {n}")
        rows = []
        for i, item in enumerate(request.interactions):
            row = rec.item_row(_pseudonym(item, f"interactions[{i}]"))
            if row is None:
                raise _invalid(f"interactions[{i}]: item {item} is not in the catalog")
            rows.append(row)
        recs = rec.recommend_cold(np.asarray(rows), request.k, diversity=request.diversity,
                                  popularity_penalty=request.popularity_penalty)
        return _reply(rec, recs)

    @_guarded
    def ReloadModel(self, request: pb.ReloadModelRequest, context) -> pb.ReloadModelReply:
        try:
            previous, new = self.reload()
        except FedrecError as exc:
            raise RequestError(grpc.StatusCode.FAILED_PRECONDITION, f"reload failed, old model kept: {exc}") from None
        return pb.ReloadModelReply(model_version=new.version, previous_version=previous, users=new.n_users)


def _lenient(parse: Callable[[bytes], object]) -> Callable[[bytes], object]:
    """A request parser that yields MALFORMED on undecodable bytes (answered INVALID_ARGUMENT, not INTERNAL)."""

    def parser(data: bytes) -> object:
        try:
            return parse(data)
        except Exception:  # protobuf DecodeError and friends
            return MALFORMED

    return parser


def _handlers(service: RecommenderService) -> grpc.GenericRpcHandler:
    methods = {
        "Recommend": (service.Recommend, pb.RecommendRequest, pb.RecommendReply),
        "RecommendCold": (service.RecommendCold, pb.RecommendColdRequest, pb.RecommendReply),
        "ReloadModel": (service.ReloadModel, pb.ReloadModelRequest, pb.ReloadModelReply),
    }
    return grpc.method_handlers_generic_handler(SERVICE, {
        name: grpc.unary_unary_rpc_method_handler(fn, request_deserializer=_lenient(req.FromString),
                                                  response_serializer=rep.SerializeToString)
        for name, (fn, req, rep) in methods.items()
    })


@dataclass
class RunningServer:
    """A started server: its bound port, the service (for reloads) and the health servicer."""

    server: grpc.Server
    port: int
    service: RecommenderService
    health: health.HealthServicer

    def stop(self, grace: float | None = 2.0) -> None:
        """Report NOT_SERVING, finish in-flight requests for up to ``grace`` seconds, stop."""
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()


def _read_pem(path: Path | str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise FedrecError(f"{path}: cannot read the TLS {what} ({exc.strerror})") from None


def is_loopback(host: str) -> bool:
    """True for ``localhost``, 127.0.0.0/8 and ::1 (brackets allowed); False for anything else, "" included."""
    name = host.strip()
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    if name.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def client_ca_file(client_ca: Path | str) -> Path:
    """The CA bundle for client certificates: a PEM file, or a ``fedrec certs`` directory (its ``ca.crt``)."""
    path = Path(client_ca)
    return path / "ca.crt" if path.is_dir() else path


def check_access(host: str, *, tls_cert: Path | None, tls_key: Path | None, client_ca: Path | str | None) -> None:
    """Refuse (InsecureServingError) plain text off loopback, ``--client-ca`` without TLS, half a key pair."""
    if (tls_cert is None) != (tls_key is None):
        raise InsecureServingError("TLS needs both --tls-cert and --tls-key")
    if client_ca is not None and tls_cert is None:
        raise InsecureServingError("--client-ca needs TLS: add --tls-cert and --tls-key")
    if tls_cert is None and not is_loopback(host):
        raise InsecureServingError(
            f"refusing to serve on {host or 'all interfaces'!r} without TLS (recommendation lists reveal users' "
            "histories): add --tls-cert/--tls-key (and --client-ca to admit only certificate holders), "
            "or bind a loopback address (127.0.0.1, ::1, localhost)")


def _address(host: str, port: int) -> str:
    try:
        if ipaddress.ip_address(host).version == 6:
            return f"[{host}]:{port}"
    except ValueError:
        pass
    return f"{host}:{port}"


def start_server(loader: Callable[[], NodeRecommender], *, host: str = "127.0.0.1", port: int = 0,
                 tls_cert: Path | None = None, tls_key: Path | None = None, client_ca: Path | str | None = None,
                 max_workers: int = 8, initial: NodeRecommender | None = None,
                 approximate: bool = False) -> RunningServer:
    """Load the recommender, bind ``host:port`` (0 = a free port), start serving.

    TLS when cert and key are given; with ``client_ca`` (PEM bundle or ``fedrec certs`` directory) every client
    must present a certificate signed by it. Off loopback TLS is required; a refused setup loads and binds nothing.
    ``approximate``: Recommend answers plain top-K from the IVF index (GMF; built before serving and on reload).
    """
    check_access(host, tls_cert=tls_cert, tls_key=tls_key, client_ca=client_ca)
    address = _address(host, port)
    creds = None
    if tls_cert is not None:
        ca = _read_pem(client_ca_file(client_ca), "client CA bundle") if client_ca is not None else None
        if ca is not None and b"-----BEGIN CERTIFICATE-----" not in ca:
            raise InsecureServingError(f"{client_ca_file(client_ca)}: --client-ca holds no PEM certificate")
        creds = grpc.ssl_server_credentials([(_read_pem(tls_key, "key"), _read_pem(tls_cert, "certificate"))],
                                            root_certificates=ca, require_client_auth=ca is not None)
        if ca is None and not is_loopback(host):
            log.warning("TLS without --client-ca: any client that reaches %s gets recommendations", address)
    service = RecommenderService(loader, initial, approximate=approximate)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="fedrec-rpc"))
    server.add_generic_rpc_handlers((_handlers(service),))  # the generated stub's methods, lenient parsing
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    try:
        bound = server.add_secure_port(address, creds) if creds is not None else server.add_insecure_port(address)
    except RuntimeError as exc:
        raise FedrecError(f"cannot listen on {address} ({exc})") from None
    if not bound:
        raise FedrecError(f"cannot listen on {address}")
    server.start()
    for name in ("", SERVICE):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return RunningServer(server, bound, service, health_servicer)
