"""Row-wise FedAvg for sparse updates (``federation.aggregation = "row-mean"``).

With one user (or a few) per node, a node's update changes only the item rows it trained on; every other row
comes back exactly as sent. Plain FedAvg averages each row over *all* sampled nodes, so a row moves by the share
of nodes that touched it times their mean update: rare items barely move. Row-mean averages each row (the first
axis of every array; each element of a 1-D array) over the nodes whose row changed, example-weighted, and keeps
rows that no node changed. Dense layers, which every node changes, are aggregated exactly as by FedAvg.

It uses nothing the coordinator does not already see (the updates themselves). It needs exact "unchanged"
rows, so it is refused with fp16 compression, secure aggregation and any DP (noise changes every row).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg


def changed_rows(value: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Boolean per row (first axis; per element for 1-D; one flag for 0-D): differs from ``reference``."""
    diff = value != reference
    if diff.ndim <= 1:
        return np.atleast_1d(diff)
    return diff.reshape(diff.shape[0], -1).any(axis=1)


def row_mean(updates: list[tuple[dict[str, np.ndarray], float]], reference: dict[str, np.ndarray]
             ) -> dict[str, np.ndarray]:
    """Per row: the weighted mean over the updates that changed it; the reference where none did."""
    out: dict[str, np.ndarray] = {}
    for key, ref in reference.items():
        ref64 = np.atleast_1d(ref).astype(np.float64)
        num = np.zeros_like(ref64)
        den = np.zeros(ref64.shape[0], np.float64)
        for arrays, weight in updates:
            value = np.atleast_1d(arrays[key]).astype(np.float64)
            mask = changed_rows(value, ref64) * float(weight)
            num += value * mask.reshape(-1, *([1] * (value.ndim - 1)))
            den += mask
        touched = den > 0
        agg = ref64.copy()
        agg[touched] = num[touched] / den[touched].reshape(-1, *([1] * (ref64.ndim - 1)))
        out[key] = agg.reshape(ref.shape).astype(ref.dtype)
    return out


class RowMeanFedAvg(FedAvg):
    """FedAvg whose array aggregation is :func:`row_mean` against the arrays sent this round."""

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
                        ) -> Iterable[Message]:
        self._sent = {k: a.numpy().copy() for k, a in arrays.items()}
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        # the reply guard around this strategy has already validated every reply it passes on
        contents = [msg.content for msg in replies if not msg.has_error()]
        if not contents:
            return None, None
        updates = [({k: a.numpy() for k, a in next(iter(c.array_records.values())).items()},
                    float(next(iter(c.metric_records.values()))[self.weighted_by_key])) for c in contents]
        agg = row_mean(updates, self._sent)
        metrics = self.train_metrics_aggr_fn(contents, self.weighted_by_key)
        return ArrayRecord({k: Array(v) for k, v in agg.items()}), metrics
