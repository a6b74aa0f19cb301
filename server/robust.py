"""Defenses against hostile nodes: replay detection, norm bounding, robust aggregation.

- :class:`ReplayRegistry`: the SHA-256 of every accepted update of the run. A reply whose arrays equal an
  update accepted before — the node's own from an earlier round, or another node's — is rejected. A reply
  equal to the model the coordinator sent (no training at all) is not a replay. The registry is saved with
  the strategy state in every checkpoint, so a resumed run still knows what it accepted.
- :func:`bound_update`: norm bounding (``federation.norm-bound``): an update ``new - old`` longer than the bound is
  scaled down to it before aggregation (Sun et al. 2019, "Can you really backdoor federated learning?").
- :func:`aggregator`: ``federation.aggregation = "mean" | "median" | "trimmed-mean"`` with Flower's FedAvg,
  FedMedian (coordinate-wise median, Yin et al. 2018) or FedTrimmedAvg (``federation.trim-fraction`` cut per tail);
  ``"row-mean"`` (:mod:`server.row_mean`) is not a defense but FedAvg for sparse one-user updates.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord
from flwr.serverapp.strategy import FedAvg, FedMedian, FedTrimmedAvg

from shared.config import RunConfig

REGISTRY_KEY = "replay-registry"  # key of the registry in the checkpointed strategy state


def update_digest(arrays: Mapping[str, Any]) -> bytes:
    """SHA-256 over the (sorted) keys, dtypes, shapes and bytes of a reply's arrays."""
    h = hashlib.sha256()
    for key in sorted(arrays):
        value = arrays[key]
        value = value.numpy() if isinstance(value, Array) else np.asarray(value)
        h.update(f"{key}|{value.dtype.str}|{value.shape}|".encode())
        h.update(np.ascontiguousarray(value).tobytes())
    return h.digest()


class ReplayRegistry:
    """Digests of every accepted update of the run: digest -> (round, node)."""

    def __init__(self) -> None:
        self.seen: dict[bytes, tuple[int, int]] = {}

    def problem(self, digest: bytes, pending: Mapping[bytes, int] | None = None) -> str | None:
        """Why an update with this digest is a replay, or None."""
        if digest in self.seen:
            rnd, node = self.seen[digest]
            return f"replayed update: identical to the update node {node} sent in round {rnd}"
        if pending and digest in pending:
            return f"duplicate update: identical to the update node {pending[digest]} sent this round"
        return None

    def add(self, digest: bytes, server_round: int, node: int) -> None:
        self.seen.setdefault(digest, (server_round, node))

    def state(self) -> dict[str, np.ndarray]:
        """Arrays for the checkpoint (node ids as the int64 view of their uint64 bits)."""
        items = list(self.seen.items())
        return {
            "digests": np.array([list(d) for d, _ in items], np.uint8).reshape(len(items), 32),
            "rounds": np.array([r for _, (r, _) in items], np.int64),
            "nodes": np.array([n for _, (_, n) in items], np.uint64).view(np.int64),
        }

    def restore(self, state: Mapping[str, np.ndarray]) -> None:
        nodes = np.asarray(state["nodes"], np.int64).view(np.uint64)
        for d, r, n in zip(np.asarray(state["digests"], np.uint8), state["rounds"], nodes, strict=True):
            self.seen[bytes(d.tolist())] = (int(r), int(n))


def update_norm(record: ArrayRecord, reference: Mapping[str, np.ndarray]) -> float:
    """``||new - old||_2`` over every array."""
    return math.sqrt(sum(float(((record[k].numpy().astype(np.float64) - ref) ** 2).sum())
                         for k, ref in reference.items()))


def bound_update(record: ArrayRecord, reference: Mapping[str, np.ndarray], bound: float) -> float | None:
    """Scale the update down to norm ``bound`` in place; return its original norm if it was longer, else None."""
    norm = update_norm(record, reference)
    if norm <= bound:
        return None
    scale = bound / norm
    for key, ref in reference.items():
        value = record[key].numpy()
        record[key] = Array((ref + (value.astype(np.float64) - ref) * scale).astype(value.dtype))
    return norm


def aggregator(cfg: RunConfig, common: Mapping[str, Any]) -> FedAvg:
    """The FedAvg-family strategy of ``cfg.federation.aggregation``."""
    if cfg.federation.aggregation == "median":
        return FedMedian(**common)
    if cfg.federation.aggregation == "trimmed-mean":
        return FedTrimmedAvg(beta=cfg.federation.trim_fraction, **common)
    if cfg.federation.aggregation == "row-mean":
        from server.row_mean import RowMeanFedAvg

        return RowMeanFedAvg(**common)
    return FedAvg(**common)
