"""Validate every training reply before aggregation (a wrapper around any Flower strategy).

A reply is aggregated only if it carries exactly the global arrays that were sent
(same keys, shapes and dtypes), all finite, an update ``||new - old||_2`` within
``max_update_norm``, and the agreed metric keys with a positive finite
``num-examples`` — and if it is no replay of an update accepted before in this
run, from any node (:mod:`server.robust`). Anything else is dropped with a logged reason;
the round goes on with the other nodes. Accepted updates longer than
``norm_bound`` (> 0) are scaled down to it. Node sampling is made deterministic
per (seed, round).
"""

from __future__ import annotations

import logging
import math
import random
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from server.robust import ReplayRegistry, bound_update, update_digest
from shared import sparse_rows
from shared.seeding import derive

log = logging.getLogger("flwr")  # streamed by `flwr run --stream`
TRAIN_METRICS = frozenset({"num-examples", "train-loss", "train-seconds", "steps"})


@dataclass
class RoundReport:
    """What the guard saw in one training round."""

    accepted: list[int] = field(default_factory=list)
    rejected: list[tuple[int, str]] = field(default_factory=list)
    failed: list[tuple[int, str]] = field(default_factory=list)
    bytes_up: list[int] = field(default_factory=list)
    bytes_down: int = 0
    sampled: int = 0
    ledgers: dict[int, list[str]] = field(default_factory=dict)  # node -> its signed chain (JSON lines)
    epsilons: dict[int, float] = field(default_factory=dict)
    bounded: list[tuple[int, float]] = field(default_factory=list)  # (node, norm before norm bounding)


def reply_problem(msg: Message, reference: dict[str, np.ndarray], max_norm: float) -> str | None:
    """Why a training reply must be rejected, or None if it is fine."""
    content = msg.content
    if len(content.array_records) != 1 or len(content.metric_records) != 1:
        return "reply must hold exactly one ArrayRecord and one MetricRecord"
    arrays = next(iter(content.array_records.values()))
    metrics = next(iter(content.metric_records.values()))
    if set(arrays.keys()) != set(reference):
        extra, missing = sorted(set(arrays.keys()) - set(reference)), sorted(set(reference) - set(arrays.keys()))
        return f"array keys differ from the global model (unexpected {extra[:3]}, missing {missing[:3]})"
    sq = 0.0
    for key, ref in reference.items():
        arr = arrays[key]
        if tuple(arr.shape) != ref.shape:
            return f"{key}: shape {tuple(arr.shape)} != {ref.shape}"
        if np.dtype(arr.dtype) != ref.dtype:
            return f"{key}: dtype {arr.dtype} != {ref.dtype}"
        value = arr.numpy()
        if not np.isfinite(value).all():
            return f"{key}: non-finite values"
        sq += float(((value.astype(np.float64) - ref) ** 2).sum())
    norm = math.sqrt(sq)
    if norm > max_norm:
        return f"update norm {norm:.4g} exceeds max-update-norm {max_norm:.4g}"
    n = metrics.get("num-examples")
    if not isinstance(n, int | float) or isinstance(n, bool) or not math.isfinite(n) or n <= 0:
        return f"num-examples must be a positive number, got {n!r}"
    for key, value in metrics.items():
        if not isinstance(value, list) and not math.isfinite(float(value)):
            return f"metric {key} is not finite"
    return None


class ReplyGuard(Strategy):
    """Delegate to ``inner``; filter training replies; seed node sampling."""

    def __init__(self, inner: Strategy, *, max_update_norm: float, seed: int, norm_bound: float = 0.0,
                 compression: str = "none", item_updates: str = "dense") -> None:
        self.inner = inner
        self.compression = compression  # "fp16": replies are upcast to the model's dtypes before validation
        self.item_updates = item_updates  # "sparse": replies' changed rows are rebuilt into dense arrays first
        self.max_update_norm = max_update_norm
        self.norm_bound = norm_bound
        self.seed = seed
        self.replays = ReplayRegistry()
        self._reference: dict[str, np.ndarray] = {}
        self._reference_digest = b""
        self.report = RoundReport()

    def summary(self) -> None:
        self.inner.summary()

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid):
        self._reference = {k: a.numpy() for k, a in arrays.items()}
        self._reference_digest = update_digest(self._reference)
        random.seed(derive(self.seed, "sample-train", server_round))
        messages = list(self.inner.configure_train(server_round, arrays, config, _SortedGrid(grid)))
        self.report = RoundReport(sampled=len(messages), bytes_down=arrays.count_bytes())
        return messages

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        replies = list(replies)
        report = self.report
        fine: list[Message] = []
        wire: dict[int, int] = {}  # bytes of arrays as received (before any upcast)
        digests: dict[int, bytes] = {}
        pending: dict[bytes, int] = {}  # digest -> node, this round
        for msg in replies:
            node = msg.metadata.src_node_id
            if failed_reply(msg, report, server_round, "train"):
                continue
            collect_privacy(msg, node, report)  # a spend is real even if the update is then rejected
            wire[node] = sum(r.count_bytes() for r in msg.content.array_records.values())
            problem = densify_rows(msg, self._reference) if self.item_updates == "sparse" else None
            if problem is None and self.compression == "fp16":
                upcast_fp16(msg, self._reference)
            problem = problem or reply_problem(msg, self._reference, self.max_update_norm)
            if problem is None:
                digests[node] = update_digest(next(iter(msg.content.array_records.values())))
                if digests[node] != self._reference_digest:  # an unchanged model is no replay
                    problem = self.replays.problem(digests[node], pending)
            if problem is None:
                pending.setdefault(digests[node], node)
                fine.append(msg)
            else:
                report.rejected.append((node, problem))
                log.warning("round %d: rejected reply of node %d: %s", server_round, node, problem)
        keysets = Counter(frozenset(next(iter(m.content.metric_records.values())).keys()) for m in fine)
        if keysets:
            agreed = keysets.most_common(1)[0][0]
            for msg in [m for m in fine if frozenset(next(iter(m.content.metric_records.values())).keys()) != agreed]:
                fine.remove(msg)
                report.rejected.append((msg.metadata.src_node_id, "metric keys differ from the other nodes"))
        report.accepted = [m.metadata.src_node_id for m in fine]
        for msg in fine:
            node = msg.metadata.src_node_id
            if digests[node] != self._reference_digest:
                self.replays.add(digests[node], server_round, node)
            record = next(iter(msg.content.array_records.values()))
            if self.norm_bound > 0 and (norm := bound_update(record, self._reference, self.norm_bound)):
                report.bounded.append((node, norm))
                log.info("round %d: update of node %d bounded from norm %.4g to %.4g", server_round, node, norm,
                         self.norm_bound)
        report.bytes_up = [wire[m.metadata.src_node_id] for m in fine]
        if not fine:
            return None, None
        return self.inner.aggregate_train(server_round, fine)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid):
        random.seed(derive(self.seed, "sample-evaluate", server_round))
        return self.inner.configure_evaluate(server_round, arrays, config, _SortedGrid(grid))

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return self.inner.aggregate_evaluate(server_round, replies)


def densify_rows(msg: Message, reference: dict[str, np.ndarray]) -> str | None:
    """Rebuild a sparse reply's dense arrays in place (:mod:`shared.sparse_rows`); why it is malformed, or None."""
    if len(msg.content.array_records) != 1:
        return None  # malformed: reply_problem names it
    name, record = next(iter(msg.content.array_records.items()))
    dense, problem = sparse_rows.decode({k: a.numpy() for k, a in record.items()}, reference)
    if problem is None:
        msg.content[name] = ArrayRecord({k: Array(v) for k, v in dense.items()})
    return problem


def upcast_fp16(msg: Message, reference: dict[str, np.ndarray]) -> None:
    """Upcast float16 arrays of a reply to the global model's float dtype, in place (lossless)."""
    for record in msg.content.array_records.values():
        for key in list(record.keys()):
            ref = reference.get(key)
            if ref is not None and np.dtype(record[key].dtype) == np.float16 and np.issubdtype(ref.dtype, np.floating):
                record[key] = Array(record[key].numpy().astype(ref.dtype))


def failed_reply(msg: Message, report: RoundReport, server_round: int, what: str) -> bool:
    """Record an error reply in ``report`` (and log it); True if ``msg`` is one."""
    if not msg.has_error():
        return False
    report.failed.append((msg.metadata.src_node_id, msg.error.reason))
    log.warning("round %d: node %d did not %s: %s", server_round, msg.metadata.src_node_id, what, msg.error.reason)
    return True


def collect_privacy(msg: Message, node: int, report: RoundReport) -> None:
    """Keep a reply's ledger chain and epsilon in ``report`` (a spend is real even if the reply is rejected)."""
    ledger = msg.content.config_records.get("ledger")
    if ledger is not None and isinstance(ledger.get("entries"), list):
        report.ledgers[node] = [str(x) for x in ledger["entries"]]
    for metrics in msg.content.metric_records.values():
        eps = metrics.get("epsilon")
        if isinstance(eps, int | float):
            report.epsilons[node] = float(eps)


class _SortedGrid:
    """A Grid view whose node ids come sorted, so seeded sampling is reproducible."""

    def __init__(self, grid: Grid) -> None:
        self._grid = grid

    def get_node_ids(self):
        return sorted(self._grid.get_node_ids())

    def __getattr__(self, name: str):
        return getattr(self._grid, name)
