"""One contract every aggregation passes (as implicit's ``RecommenderBaseTestMixin`` runs every model).

Each aggregation — FedAvg's weighted mean, coordinate-wise median, trimmed mean, row-mean, node-level DP-FedAvg
and SecAgg+ — runs one real round of the coordinator loop on the in-process Grid (real ClientApp, real mods,
real strategy, reply guard, SecAgg+ protocol). Only the nodes' local training is scripted: node ``i`` returns the
received model plus a known update ``d_i`` with a known weight, so the aggregate has a known answer. The
contract:

1. the new global model is the aggregation's *definition* applied to the updates (exactly, up to SecAgg+'s
   quantization; DP-FedAvg: plus Gaussian noise with exactly the planned standard deviation);
2. a node that refuses is left out and the aggregate is the definition over the others;
3. the global model keeps its keys, shapes and dtypes;
4. noise-free aggregations stay inside the coordinate-wise hull of the updates.

Adding an aggregation means adding one entry to :data:`AGGREGATIONS`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch
from scipy import stats

import client.app
import client.secagg
from client.local import LocalUpdate, Refusal
from server import checkpoint
from server.central_dp import CentralDP
from server.loop import initial_model
from shared.config import RunConfig
from tests.support import cfg_for, federate, records

NODES = 4
pytestmark = pytest.mark.usefixtures("one_thread")

Updates = list[dict[str, np.ndarray]]  # the new model each node sends


def weighted_mean(values: Updates, weights: list[float]) -> dict[str, np.ndarray]:
    w = np.asarray(weights, np.float64) / sum(weights)
    return {k: sum(wi * v[k].astype(np.float64) for wi, v in zip(w, values, strict=True)) for k in values[0]}


def coordinate(fn: Callable[[np.ndarray], np.ndarray]) -> Callable[[Updates, list[float]], dict[str, np.ndarray]]:
    """An unweighted coordinate-wise statistic over the nodes' arrays."""
    return lambda values, _: {k: fn(np.stack([v[k].astype(np.float64) for v in values])) for k in values[0]}


@dataclass(frozen=True)
class Aggregation:
    """How to configure one aggregation, and what it computes from the updates and weights."""

    config: dict
    definition: Callable[[Updates, list[float]], dict[str, np.ndarray]]
    atol: float = 1e-6  # float32 arithmetic; SecAgg+: its quantization step
    noisy: bool = False  # DP-FedAvg: the planned Gaussian noise is added
    extra: dict = field(default_factory=dict)


AGGREGATIONS = {
    "mean": Aggregation({}, weighted_mean),
    "median": Aggregation({"federation.aggregation": "median"}, coordinate(lambda a: np.median(a, axis=0))),
    "trimmed-mean": Aggregation({"federation.aggregation": "trimmed-mean", "federation.trim-fraction": 0.25},
                                coordinate(lambda a: stats.trim_mean(a, 0.25, axis=0))),
    "row-mean": Aggregation({"federation.aggregation": "row-mean"}, weighted_mean),  # every row is touched
    # node-level DP-FedAvg: equal weights (node-weight = 1), the update clipped to 1.0 (ours are far shorter)
    "dp-fedavg": Aggregation({"dp.enabled": True, "dp.unit": "node", "dp.clip-norm": 1.0, "dp.target-epsilon": 8.0},
                             lambda values, _: weighted_mean(values, [1.0] * len(values)), noisy=True),
    # SecAgg+ rounds value * n / max-weight to 2^29 levels over [-8, 8]: the mean moves < 4 * 16 / 2^29 / 0.01
    # (max-weight must bound the real nodes' example counts, ~5,000, which the node checks)
    "secagg+": Aggregation({"transport.secure-aggregation": True, "transport.secagg-max-weight": 10_000.0},
                           weighted_mean, atol=2e-5),
}


def scripted_update(node: int, reference: dict[str, torch.Tensor]) -> tuple[OrderedDict, int]:
    """Node ``node``'s new model: the received one plus a seeded update of norm ~0.2 on every element."""
    rng = np.random.default_rng(1000 + node)
    new = OrderedDict((k, v + torch.from_numpy(rng.normal(0.0, 0.002, v.shape).astype(np.float32)))
                      for k, v in reference.items())
    return new, 10 * (node + 1)


@pytest.fixture
def scripted_nodes(monkeypatch):
    """Replace local training (plain and SecAgg+ paths) by :func:`scripted_update`; ``refuse`` lists partitions."""
    refuse: set[int] = set()

    def train(config, global_part, context):
        node = int(context.node_config["partition-id"])
        if node in refuse:
            raise Refusal("scripted refusal")
        new, n = scripted_update(node, global_part)
        metrics = {"num-examples": n, "train-loss": 0.5, "train-seconds": 0.0, "steps": 1, "node-weight": 1}
        return LocalUpdate(new, metrics, None)

    monkeypatch.setattr(client.app, "train_locally", train)
    monkeypatch.setattr(client.secagg, "train_locally", train)
    return refuse


def one_round(tmp_path, agg: Aggregation) -> tuple[RunConfig, dict[str, np.ndarray], dict[str, np.ndarray]]:
    cfg = cfg_for(tmp_path, **{"data.partitions": NODES, "federation.min-nodes": NODES, "federation.rounds": 1,
                               "model.embedding-dim": 16, **agg.config})
    reference = {k: v.numpy().copy() for k, v in initial_model(cfg)[0].items()}
    federate(cfg)
    return cfg, reference, checkpoint.load(tmp_path / "run").arrays


def expected(agg: Aggregation, reference: dict[str, np.ndarray], nodes: list[int]) -> dict[str, np.ndarray]:
    torch_ref = {k: torch.from_numpy(v.copy()) for k, v in reference.items()}
    sent = [scripted_update(i, torch_ref) for i in nodes]
    return agg.definition([{k: t.numpy() for k, t in new.items()} for new, _ in sent], [float(n) for _, n in sent])


def check(cfg: RunConfig, agg: Aggregation, reference, got, want, tmp_path) -> None:
    assert list(got) == list(reference)
    assert all(got[k].shape == reference[k].shape and got[k].dtype == reference[k].dtype for k in reference)
    if not agg.noisy:
        for k in reference:
            np.testing.assert_allclose(got[k], want[k], rtol=0, atol=agg.atol, err_msg=k)
        return
    # DP-FedAvg: the residual is the planned Gaussian noise, std z * clip / m (m = planned sampled nodes)
    dp = CentralDP(cfg, tmp_path / "planned", "plan")
    sigma = dp.noise_multiplier * cfg.dp.clip_norm / dp.m
    residual = np.concatenate([(got[k] - want[k]).ravel() for k in reference])
    assert residual.size > 4000 and sigma > 0.05
    assert abs(residual.mean()) < 5 * sigma / np.sqrt(residual.size)
    assert abs(residual.std() / sigma - 1) < 0.06, (residual.std(), sigma)


@pytest.mark.parametrize("name", list(AGGREGATIONS))
def test_the_aggregate_is_the_definition_of_the_aggregation(tmp_path, scripted_nodes, name):
    agg = AGGREGATIONS[name]
    cfg, reference, got = one_round(tmp_path, agg)
    want = expected(agg, reference, list(range(NODES)))
    check(cfg, agg, reference, got, want, tmp_path)
    assert len(records(tmp_path)[0]["nodes"]) == NODES  # every node's update was aggregated
    if not agg.noisy:  # inside the hull of what the nodes sent
        torch_ref = {k: torch.from_numpy(v.copy()) for k, v in reference.items()}
        sent = [scripted_update(i, torch_ref)[0] for i in range(NODES)]
        for k in reference:
            stack = np.stack([s[k].numpy() for s in sent])
            assert np.all(got[k] >= stack.min(0) - agg.atol) and np.all(got[k] <= stack.max(0) + agg.atol)
    # the aggregate moved: it is not the model that was sent
    assert max(float(np.abs(got[k] - reference[k]).max()) for k in reference) > 1e-3


@pytest.mark.parametrize("name", list(AGGREGATIONS))
def test_a_refusing_node_is_left_out_of_the_aggregate(tmp_path, scripted_nodes, name):
    agg = AGGREGATIONS[name]
    scripted_nodes.add(1)
    cfg, reference, got = one_round(tmp_path, agg)
    want = expected(agg, reference, [0, 2, 3])
    check(cfg, agg, reference, got, want, tmp_path)
    record = records(tmp_path)[0]
    assert len(record["nodes"]) == NODES - 1 and 1001 not in record["nodes"] and len(record["failed"]) == 1
    assert "scripted refusal" in str(record["failed"])
    # and it is not the aggregate over all nodes (the test can tell the two apart)
    if not agg.noisy:
        every = expected(agg, reference, list(range(NODES)))
        assert max(float(np.abs(got[k] - every[k]).max()) for k in reference) > 10 * agg.atol
