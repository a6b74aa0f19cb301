"""Secure aggregation (SecAgg+) on the coordinator: one legacy SecAgg+ workflow per training round.

flwr 1.42 offers SecAgg+ only in its legacy stack (``SecAggPlusWorkflow`` insists on a
``LegacyContext`` and a legacy strategy); this module is the only place the coordinator
uses it. :class:`SecAggRun` is the normal :class:`~server.loop.FederatedRun` with another
training round, so checkpoints, resume, evaluation (message API), early stopping, the run
directory and the federation ledger are shared. Per round a ``LegacyContext`` holds the
global arrays and a legacy ``FedAvg`` subclass that samples nodes deterministically and
keeps what the protocol reveals: the example-weighted average of the sampled nodes'
global parts (dequantized) plus each node's metrics and ledger chain — never an
individual update. Per-node reply validation is therefore impossible; the aggregate is
checked instead (shapes, finite values, norm of the aggregate update).
"""

from __future__ import annotations

import logging
import math
import random
import time
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, RecordDict
from flwr.common import FitIns, Parameters, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.compat.common import recorddict_compat as compat
from flwr.server import LegacyContext, ServerConfig
from flwr.server.client_manager import SimpleClientManager
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.strategy import FedAvg
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD, Key
from flwr.serverapp import Grid

from server.guard import RoundReport
from server.loop import FederatedRun
from server.releases import ReleaseRun
from shared.config import RunConfig
from shared.errors import ConfigError
from shared.secure_sum import quantization_levels, release_unit, scale
from shared.seeding import derive

log = logging.getLogger("flwr")
LEDGER_KEY = "ledger"  # fit metric holding the node's ledger chain (see client.secagg)


def check_config(cfg: RunConfig) -> None:
    """Options that cannot be combined with secure aggregation."""
    if cfg.federation.strategy == "fedadam":
        raise ConfigError("strategy", "secure-aggregation computes FedAvg (use fedavg or fedprox)")
    if cfg.transport.compression != "none":
        raise ConfigError("update-compression", "secure-aggregation quantizes updates itself; use none")
    if cfg.federation.min_nodes < 2:
        raise ConfigError("min-nodes", "secure-aggregation needs at least 2 nodes per round")


class SumOnlyFedAvg(FedAvg):
    """Legacy FedAvg for SecAgg+: seeded sampling, fedrec's fit config, keeps what the protocol reveals."""

    def __init__(self, cfg: RunConfig, config: dict[str, Any]) -> None:
        super().__init__(fraction_fit=cfg.federation.fraction_train, fraction_evaluate=0.0, min_fit_clients=2,
                         min_evaluate_clients=0, min_available_clients=2, accept_failures=True)
        self.cfg = cfg
        self.config = config
        self.sampled: list[int] = []
        self.results: list[tuple[int, dict[str, Any], int]] = []  # node, metrics, num_examples
        self.aggregate: Parameters | None = None

    def configure_fit(self, server_round: int, parameters: Parameters, client_manager):
        proxies = sorted(client_manager.all().values(), key=lambda p: p.node_id)
        k = min(len(proxies), max(2, math.ceil(self.cfg.federation.fraction_train * len(proxies))))
        chosen = random.Random(derive(self.cfg.seed, "sample-train", server_round)).sample(proxies, k)
        self.sampled = sorted(p.node_id for p in chosen)
        return [(p, FitIns(parameters, dict(self.config))) for p in chosen]

    def aggregate_fit(self, server_round: int, results, failures):
        # every FitRes carries the same parameters: the securely aggregated weighted average
        self.results = [(proxy.node_id, dict(res.metrics), res.num_examples) for proxy, res in results]
        self.aggregate = results[0][1].parameters if results else None
        return self.aggregate, {}


class _TapGrid:
    """A Grid view that records every reply (node, bytes, error) of the protocol's four stages."""

    def __init__(self, grid: Grid) -> None:
        self._grid = grid
        self.bytes_up: dict[int, int] = {}
        self.errors: dict[int, str] = {}

    def send_and_receive(self, messages, *, timeout: float | None = None):
        replies = list(self._grid.send_and_receive(messages, timeout=timeout))
        for msg in replies:
            node = msg.metadata.src_node_id
            if msg.has_error():
                self.errors[node] = msg.error.reason
                continue
            size = sum(r.count_bytes() for r in (*msg.content.array_records.values(),
                                                  *msg.content.config_records.values(),
                                                  *msg.content.metric_records.values()))
            self.bytes_up[node] = self.bytes_up.get(node, 0) + size
        return replies

    def __getattr__(self, name: str):
        return getattr(self._grid, name)


class SecAggRun(FederatedRun):
    """A federated run whose training rounds use SecAgg+ (the coordinator sees only the sum)."""

    def __init__(self, cfg: RunConfig, grid: Grid, flower_run_id: int) -> None:
        check_config(cfg)
        super().__init__(cfg, grid, flower_run_id)

    def _train_round(self, rnd: int, arrays: ArrayRecord, catalog_hash: str, run_key: str):
        config: dict[str, Any] = {"run-key": run_key, "catalog-hash": catalog_hash}
        if self.cfg.federation.strategy == "fedprox":
            config["proximal-mu"] = self.cfg.federation.proximal_mu
        strategy, tap = secure_round(self, rnd, arrays, config, max_weight=self.cfg.transport.secagg_max_weight)
        return self._record(rnd, arrays, strategy, tap)

    def _record(self, rnd: int, arrays: ArrayRecord, strategy: SumOnlyFedAvg, tap: _TapGrid):
        included = sorted(node for node, _, _ in strategy.results)
        received = [e for node, metrics, _ in strategy.results if isinstance(metrics.get(LEDGER_KEY), str)
                    for e in self.ledger.update(node, metrics[LEDGER_KEY].splitlines())]
        self.ledger.save()
        self.manifest.record_round(rnd, received)
        lost = "no reply (dropped out)" if strategy.aggregate else "secure aggregation halted: too few nodes"
        failed = [[n, tap.errors.get(n, lost)] for n in strategy.sampled if n not in included]
        rows = [(m, n) for _, m, n in strategy.results]
        total = sum(n for _, n in rows)
        record: dict[str, Any] = {
            "round": rnd, "sampled": len(strategy.sampled), "answered": len(included), "nodes": included,
            "rejected": [], "failed": failed, "secure_aggregation": True,
            "bytes_down_per_node": arrays.count_bytes(),
            "bytes_up_per_node": float(np.mean([tap.bytes_up.get(n, 0) for n in included])) if included else 0.0,
            "train_loss": sum(float(m["train-loss"]) * n for m, n in rows) / total if total else None,
            "train_examples": int(total),
            "train_seconds_max": max((float(m["train-seconds"]) for m, _ in rows), default=None),
        }
        epsilons = [float(m["epsilon"]) for m, _ in rows if "epsilon" in m]
        if epsilons:
            record["epsilon_max"] = max(epsilons)
        if strategy.aggregate is None:
            log.warning("[fedrec] round %d: secure aggregation produced no aggregate; the model is unchanged", rnd)
            return record, arrays
        new, problem = _check_aggregate(arrays, parameters_to_ndarrays(strategy.aggregate),
                                        self.cfg.federation.max_update_norm)
        if problem:
            record["rejected"] = [[0, f"secure aggregate: {problem}"]]
            log.warning("[fedrec] round %d: rejected the secure aggregate: %s", rnd, problem)
            return record, arrays
        return record, new


def wait_for_nodes(grid: Grid, cfg: RunConfig) -> list[int]:
    """The connected nodes, once ``federation.min-nodes`` are there (or the round timeout passed)."""
    deadline = time.monotonic() + cfg.federation.round_timeout
    nodes = sorted(grid.get_node_ids())
    while len(nodes) < cfg.federation.min_nodes and time.monotonic() < deadline:
        time.sleep(1.0)
        nodes = sorted(grid.get_node_ids())
    return nodes


def secure_round(run: FederatedRun, rnd: int, arrays: ArrayRecord, config: dict[str, Any], *, max_weight: float,
                 quantization_range: int | None = None) -> tuple[SumOnlyFedAvg, _TapGrid]:
    """One SecAgg+ workflow over the sampled nodes: ``strategy.aggregate`` is the weighted mean of their arrays.

    Quantization defaults to the finest the 2^32 masking modulus allows for the connected nodes
    (:func:`~shared.secure_sum.quantization_levels`), not Flower's 2^22: a node's values are scaled by
    ``num_examples / max_weight`` before rounding, so the rounding error in model units is
    ``16 / Q * max_weight / num_examples`` and small nodes need every level.
    """
    cfg = run.cfg
    config = {**config, "server-round": rnd, "array-keys": ",".join(arrays.keys())}
    strategy = SumOnlyFedAvg(cfg, config)
    manager = SimpleClientManager()
    nodes = wait_for_nodes(run.grid, cfg)
    for node in nodes:
        manager.register(GridClientProxy(node_id=node, grid=run.grid, run_id=run.flower_run_id))
    if quantization_range is None:
        quantization_range = quantization_levels(len(nodes))
    base = Context(run_id=run.flower_run_id, node_id=0, node_config={}, state=RecordDict(), run_config={})
    legacy = LegacyContext(base, config=ServerConfig(num_rounds=cfg.federation.rounds), strategy=strategy,
                           client_manager=manager)
    legacy.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord({Key.CURRENT_ROUND: rnd})
    legacy.state.array_records[MAIN_PARAMS_RECORD] = compat.parameters_to_arrayrecord(
        ndarrays_to_parameters([a.numpy() for a in arrays.values()]), True)
    tap = _TapGrid(run.grid)
    random.seed(derive(cfg.seed, "secagg-neighbours", rnd))  # the workflow shuffles with `random`
    workflow = SecAggPlusWorkflow(num_shares=1.0, reconstruction_threshold=cfg.transport.secagg_threshold,
                                  max_weight=max_weight, quantization_range=quantization_range,
                                  timeout=cfg.federation.round_timeout)
    workflow(tap, legacy)
    return strategy, tap


def _check_aggregate(old: ArrayRecord, values: list[np.ndarray], max_norm: float) -> tuple[ArrayRecord, str | None]:
    """The aggregate in the global model's keys and dtypes, or why it must not be used."""
    if len(values) != len(old):
        return old, f"{len(values)} arrays instead of {len(old)}"
    out, sq = {}, 0.0
    for (key, ref), value in zip(old.items(), values, strict=True):
        ref_np = ref.numpy()
        if value.shape != ref_np.shape:
            return old, f"{key}: shape {value.shape} != {ref_np.shape}"
        if not np.isfinite(value).all():
            return old, f"{key}: non-finite values"
        sq += float(((value.astype(np.float64) - ref_np) ** 2).sum())
        out[key] = torch.from_numpy(np.asarray(value, dtype=ref_np.dtype))
    if math.sqrt(sq) > max_norm:
        return old, f"update norm {math.sqrt(sq):.4g} exceeds max-update-norm {max_norm:.4g}"
    return ArrayRecord(out), None



class SecAggReleases(ReleaseRun):
    """Noisy-sum releases whose sum only SecAgg+ reveals (``dp.noise = distributed``)."""

    def __init__(self, cfg: RunConfig, grid: Grid, flower_run_id: int) -> None:
        check_config(cfg)
        super().__init__(cfg, grid, flower_run_id)

    def _record(self, rnd: int, report: RoundReport) -> dict[str, Any]:
        return {**super()._record(rnd, report), "secure_aggregation": True}  # as SecAgg+ model averaging records

    def _sum(self, rnd: int, arrays: ArrayRecord, reference: dict[str, np.ndarray], config: dict[str, Any]):
        cfg = self.cfg
        available = len(wait_for_nodes(self.grid, cfg))
        sampled = min(available, max(2, math.ceil(cfg.federation.fraction_train * available)))
        levels = quantization_levels(sampled)
        strategy, tap = secure_round(self, rnd, arrays, {**config, "secagg-levels": levels}, max_weight=1.0,
                                     quantization_range=levels)
        report = RoundReport(sampled=len(strategy.sampled), bytes_down=arrays.count_bytes())
        multipliers = []
        for node, metrics, _ in strategy.results:
            if isinstance(metrics.get(LEDGER_KEY), str):
                report.ledgers[node] = metrics[LEDGER_KEY].splitlines()
            if "epsilon" in metrics:
                report.epsilons[node] = float(metrics["epsilon"])
            multipliers.append(float(metrics.get("noise-multiplier", 0.0)))
        included = sorted(node for node, _, _ in strategy.results)
        lost = "no reply (dropped out)" if strategy.aggregate else "secure aggregation halted: too few nodes"
        report.failed = [(n, tap.errors.get(n, lost)) for n in strategy.sampled if n not in included]
        total = {k: np.zeros_like(v, dtype=np.float64) for k, v in reference.items()}
        if strategy.aggregate is None:
            return total, report, 0.0
        mean = parameters_to_ndarrays(strategy.aggregate)
        factor = len(included) * scale(cfg.transport.secagg_max_users, release_unit(cfg, str(config["release"])))
        for key, value in zip(reference, mean, strict=True):
            total[key] = np.asarray(value, dtype=np.float64).reshape(reference[key].shape) * factor
        report.accepted = included
        report.bytes_up = [tap.bytes_up.get(n, 0) for n in included]
        return total, report, max(multipliers, default=0.0)
