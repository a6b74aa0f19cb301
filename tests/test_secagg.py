"""Secure aggregation (SecAgg+, Flower's legacy workflow) against plain FedAvg, with a node dropping out."""

from __future__ import annotations

import json

import numpy as np
import pytest
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Stage

import client.secagg as client_secagg
from server import checkpoint
from server.ledger import NAME
from server.loop import initial_model
from server.secagg import SecAggRun, check_config
from shared.config import RunConfig
from shared.errors import ConfigError
from shared.ledger import read_jsonl, verify_chain
from shared.secure_sum import quantization_levels
from simulations.client_app import app as client_app
from simulations.inprocess import InProcessGrid, simulation_node_configs
from tests.support import MODEL_AVERAGING, WireRecorder

# SecAggPlusWorkflow's clipping range, and the quantization fedrec uses for 3 connected nodes
CLIP, TARGET = 8.0, quantization_levels(3)
BASE = {**MODEL_AVERAGING,
        "data.synthetic-users": 240, "data.synthetic-items": 300, "model.name": "gmf", "train.lr": 0.01,
        "data.partitions": 3,
        "federation.min-nodes": 3, "eval.full-rank": False, "transport.secure-aggregation": True,
        "transport.secagg-max-weight": 10000.0}


def test_secagg_round_equals_fedavg_up_to_quantization_and_tolerates_a_dropout(tmp_path, monkeypatch):
    fits: dict[int, tuple[list[np.ndarray], int]] = {}
    plain_fit = client_secagg.FedrecNumPyClient.fit

    def recording_fit(self, parameters, config):
        arrays, n, metrics = plain_fit(self, parameters, config)
        fits[self.context.node_id] = ([a.copy() for a in arrays], n)
        return arrays, n, metrics

    monkeypatch.setattr(client_secagg.FedrecNumPyClient, "fit", recording_fit)

    def drop(msg) -> bool:  # node 1001 takes part in key sharing, then never answers again
        stage = msg.content.config_records.get(RECORD_KEY_CONFIGS, {}).get("stage")
        return msg.metadata.dst_node_id == 1001 and stage in (Stage.COLLECT_MASKED_VECTORS, Stage.UNMASK)

    cfg = RunConfig.from_mapping({**BASE, "federation.rounds": 1, "dp.enabled": True,
                                  "federation.run-dir": str(tmp_path / "run"),
                                  "sim.node-state-dir": str(tmp_path / "nodes")})
    grid = InProcessGrid(WireRecorder(client_app), simulation_node_configs(3), cfg.to_flower_config(), drop=drop)
    summary = SecAggRun(cfg, grid, 1).execute()
    assert summary.rounds_run == 1
    record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert record["nodes"] == [1000, 1002] and record["failed"] == [[1001, "no reply (dropped out)"]]
    assert sorted(fits) == [1000, 1002]  # the dropped node never trained in the masked stage

    # plain FedAvg of the same two updates, weighted by num-examples
    weights = np.array([fits[n][1] for n in (1000, 1002)], dtype=np.float64)
    expected = [sum(w * fits[n][0][i].astype(np.float64) for w, n in zip(weights, (1000, 1002), strict=True))
                / weights.sum() for i in range(len(fits[1000][0]))]
    got = list(checkpoint.load(tmp_path / "run").arrays.values())
    ratios = weights / cfg.transport.secagg_max_weight
    bound = len(weights) * (2 * CLIP / TARGET) / ratios.sum() + 1e-7  # stochastic rounding: < 1 step per node
    errors = [float(np.abs(g - e).max()) for g, e in zip(got, expected, strict=True)]
    assert max(errors) <= bound, (errors, bound)
    # ... and that is a real average: far from either node's own update
    for node in (1000, 1002):
        assert max(float(np.abs(g - a).max()) for g, a in zip(got, fits[node][0], strict=True)) > 100 * bound
    # the DP path was the normal one: each surviving node's signed spend reached the federation ledger
    entries = read_jsonl(tmp_path / "run" / NAME)
    assert len(entries) == 2 and all(not verify_chain([e]) for e in entries)
    assert record["epsilon_max"] == max(e["epsilon"] for e in entries)


def test_too_few_nodes_after_dropouts_leaves_the_model_unchanged(tmp_path):
    cfg = RunConfig.from_mapping({**BASE, "federation.rounds": 1, "federation.run-dir": str(tmp_path / "run")})
    grid = InProcessGrid(WireRecorder(client_app), simulation_node_configs(3), cfg.to_flower_config(),
                         drop=lambda m: m.metadata.dst_node_id != 1000 and RECORD_KEY_CONFIGS in m.content)
    SecAggRun(cfg, grid, 1).execute()
    ck = checkpoint.load(tmp_path / "run")
    record = ck.history[0]
    assert record["nodes"] == [] and record["train_loss"] is None and len(record["failed"]) == 3
    init, _ = initial_model(cfg)
    assert all(np.array_equal(ck.arrays[k], v.numpy()) for k, v in init.items())
    assert record["val"]["count"] > 0  # the run still evaluated and kept its books


def test_protocol_constants_and_incompatible_options():
    import client.app
    import simulations.faults

    # the SecAgg+ stage record is Flower's own constant, not a copy of it
    assert client.app.RECORD_KEY_CONFIGS is RECORD_KEY_CONFIGS
    assert simulations.faults.RECORD_KEY_CONFIGS is RECORD_KEY_CONFIGS
    for bad in ({"federation.strategy": "fedadam"}, {"transport.compression": "fp16"}, {"federation.min-nodes": 1}):
        with pytest.raises(ConfigError):
            check_config(RunConfig.from_mapping({"transport.secure-aggregation": True, **bad}))
