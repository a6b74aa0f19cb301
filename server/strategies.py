"""Build the configured Flower strategy and its metric aggregation.

FedAvg (default), FedProx (the proximal term is applied by the node's trainer;
the strategy sends ``federation.proximal-mu``) or FedAdam (server-side Adam on the averaged
update). With FedAvg, ``federation.aggregation`` may replace the mean by a coordinate-wise
median or trimmed mean (:mod:`server.robust`). Evaluation metrics are *sums and
counts*, so they are aggregated by summation, never by averaging averages.
"""

from __future__ import annotations

from flwr.app import MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAdam, FedAvg, FedProx, Strategy

from server.central_dp import CentralDP
from server.guard import ReplyGuard
from server.robust import REGISTRY_KEY, aggregator
from shared.config import RunConfig
from shared.errors import ConfigError


def sum_metrics(records: list[RecordDict], weight_key: str) -> MetricRecord:
    """Add every numeric metric over the replies (for additive evaluation sums)."""
    total: dict[str, float] = {}
    for record in records:
        for metrics in record.metric_records.values():
            for key, value in metrics.items():
                total[key] = total.get(key, 0) + value
    return MetricRecord(total)


def train_metrics(records: list[RecordDict], weight_key: str) -> MetricRecord:
    """Example-weighted mean loss, total examples and steps, slowest node's seconds."""
    rows = [next(iter(r.metric_records.values())) for r in records]
    n = sum(float(m["num-examples"]) for m in rows)
    return MetricRecord({
        "train-loss": sum(float(m["train-loss"]) * float(m["num-examples"]) for m in rows) / n,
        "num-examples": int(n),
        "steps": int(sum(int(m["steps"]) for m in rows)),
        "train-seconds-max": max(float(m["train-seconds"]) for m in rows),
    })


def build_strategy(cfg: RunConfig, central_dp: CentralDP | None = None) -> ReplyGuard:
    """The inner strategy of ``federation.strategy`` (inside node-level DP when given), wrapped in the reply guard."""
    common = dict(
        fraction_train=cfg.federation.fraction_train,
        fraction_evaluate=cfg.federation.fraction_evaluate,
        min_train_nodes=1,
        min_evaluate_nodes=1 if cfg.federation.fraction_evaluate > 0 else 0,
        min_available_nodes=cfg.federation.min_nodes,
        train_metrics_aggr_fn=train_metrics,
        evaluate_metrics_aggr_fn=sum_metrics,
    )
    inner: Strategy
    if cfg.federation.strategy == "fedprox":
        inner = FedProx(proximal_mu=cfg.federation.proximal_mu, **common)
    elif cfg.federation.strategy == "fedadam":
        inner = FedAdam(eta=cfg.federation.server_lr, eta_l=cfg.train.lr, **common)
    else:
        inner = aggregator(cfg, common)
    if central_dp is not None:
        if cfg.federation.strategy != "fedavg":
            raise ConfigError("strategy", "node-level DP runs with fedavg (equal-weight average + noise)")
        inner = central_dp.wrap(FedAvg(**common, weighted_by_key="node-weight"))
    return ReplyGuard(inner, max_update_norm=cfg.federation.max_update_norm, seed=cfg.seed,
                      norm_bound=cfg.federation.norm_bound, compression=cfg.transport.compression,
                      item_updates=cfg.transport.item_updates)


STATE_ATTRS = ("m_t", "v_t")


def strategy_state(strategy: ReplyGuard) -> dict:
    """The inner strategy's optimizer state (FedAdam moments) and the guard's replay registry, for checkpoints."""
    state = {a: getattr(strategy.inner, a) for a in STATE_ATTRS if getattr(strategy.inner, a, None) is not None}
    state[REGISTRY_KEY] = strategy.replays.state()
    return state


def restore_strategy_state(strategy: ReplyGuard, state: dict) -> None:
    for attr, value in state.items():
        if attr == REGISTRY_KEY:
            strategy.replays.restore(value)
        else:
            setattr(strategy.inner, attr, value)
