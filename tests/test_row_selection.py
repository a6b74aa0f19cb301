"""DP row selection (dp.row-threshold, DP-AdaFEST): bounded counts, exact without noise, noise on selected rows
only, the pair accounted as one Gaussian, in the ledger and recomputed by the audit, sparse replies under DP."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from client.privacy import plan_for
from client.privacy.releases import gradient_release
from client.privacy.samples import UserSamples
from client.trainer import TrainSettings
from fedrec.cli import app
from server.ledger import NAME
from shared.accounting import epsilon
from shared.audit import audit_entries
from shared.config import RunConfig
from shared.datasets import synthetic_tables
from shared.errors import ConfigError
from shared.interactions import InteractionData
from shared.ledger import NodeLedger, SigningKey, read_jsonl
from shared.models import build_model
from shared.row_selection import composed_multiplier, is_item_table, row_contributions, split_multiplier
from shared.secret_random import SecretRandomness
from simulations.client_app import app as client_app
from simulations.inprocess import InProcessGrid, simulation_node_configs
from simulations.server_app import federated_run
from tests.support import heavy_and_light

RELEASES = {"dp.enabled": True, "dp.mechanism": "sgd", "dp.frequency-share": 0.1, "dp.sample-rate": 1.0,
            "model.name": "gmf", "model.item-bias": True, "model.embedding-dim": 8, "dp.clip-norm": 0.1,
            "train.user-epochs": 0, "dp.noise": "local", "dp.row-threshold": 2.0}


def test_each_user_moves_the_row_counts_by_exactly_one_whatever_its_size():
    data = heavy_and_light()
    rng = np.random.default_rng(0)
    for cap in (600, 64):
        _, items, targets, mask = UserSamples(data, max_interactions=cap, k=4, rng=rng).__getitems__([0, 1])
        for b in range(2):
            counts = row_contributions(items[b : b + 1].numpy(), targets[b : b + 1].numpy(),
                                       mask[b : b + 1].numpy(), data.n_items)
            assert np.linalg.norm(counts) == pytest.approx(1.0)
            assert np.count_nonzero(counts) == min(cap, 500 if b == 0 else 5)  # its positives only, no negatives


def test_the_two_parts_compose_to_the_planned_multiplier():
    z1, z2 = split_multiplier(2.0, 0.1)
    assert (z1, z2) == pytest.approx((2.0 / math.sqrt(0.1), 2.0 / math.sqrt(0.9)))
    assert composed_multiplier(z1, z2) == pytest.approx(2.0)
    # both parts see the same Poisson sample, so the pair is ONE subsampled Gaussian of multiplier z; composing
    # them as two independently subsampled releases would count the amplification twice and under-report
    joint = epsilon([(2.0, 0.1, 50)], 1e-5)
    assert joint > epsilon([(z1, 0.1, 50), (z2, 0.1, 50)], 1e-5) * 1.01
    with pytest.raises(ValueError):
        split_multiplier(1.0, 1.0)


def _release(cfg: RunConfig, data: InteractionData, plan, entropy: bytes):
    torch.manual_seed(0)
    model = build_model(cfg, data.n_users, data.n_items)
    return gradient_release(model, data, TrainSettings.from_config(cfg), plan, cfg, SecretRandomness(entropy))


@pytest.fixture(scope="module")
def data() -> InteractionData:
    return InteractionData.from_tables(synthetic_tables(3, 60, 400))


def test_without_noise_the_release_is_the_dense_sum_on_the_rows_the_sample_used(data):
    """Same secret sample (same entropy): zero noise selects every row with a positive, the rest are zero."""
    data = data.subset(np.arange(8))  # 8 users use some of the 400 items
    cfg = RunConfig.from_mapping({**RELEASES, "dp.max-interactions": 1000})
    plan = replace(plan_for(cfg, data), noise_multiplier=0.0)
    dense = _release(cfg, data, replace(plan, row_threshold=0.0), b"s" * 32)
    sparse = _release(cfg, data, plan, b"s" * 32)
    used = np.zeros(data.n_items, bool)
    used[data.train_items] = True  # q = 1 and no cap: every user's every positive is in the sample
    assert 0 < used.sum() < data.n_items
    for key, value in dense.items():
        if is_item_table(key):
            expected = value.clone()
            expected[~torch.from_numpy(used)] = 0
            assert torch.equal(sparse[key], expected), key
        else:
            assert torch.equal(sparse[key], value), key


def test_noise_lands_on_the_selected_rows_only(data):
    cfg = RunConfig.from_mapping({**RELEASES, "dp.max-interactions": 1000, "dp.row-threshold": 3.0})
    plan = plan_for(cfg, data)
    z1, z2 = plan.multipliers
    assert plan.gradient_multiplier == z2 and composed_multiplier(z1, z2) == pytest.approx(plan.noise_multiplier)
    released = _release(cfg, data, plan, b"n" * 32)
    table = released["item_emb.gmf.weight"]
    selected = table.abs().sum(1) > 0
    assert torch.equal(selected, released["item_bias.weight"].abs().sum(1) > 0)  # one selection for every table
    assert 0 < int(selected.sum()) < data.n_items  # a 3-std threshold on 60 users keeps the popular rows
    noise = released["out.weight"]  # dense layers: the clipped sum plus noise of std z2 * C
    assert float(noise.abs().max()) > 0


# --- end to end: three nodes, sparse replies, the ledger and the audit -------------------------------
SMALL = {**RELEASES, "data.synthetic-users": 600, "data.synthetic-items": 400, "data.partitions": 3,
         "federation.min-nodes": 3, "federation.rounds": 3, "eval.full-rank": False, "dp.server-lr": 5.0,
         "dp.target-epsilon": 8.0, "dp.floor-below": 1500.0, "transport.item-updates": "sparse"}


def _run(tmp_path, **extra):
    cfg = RunConfig.from_mapping({**SMALL, **extra, "federation.run-dir": str(tmp_path / "run"),
                                  "sim.node-state-dir": str(tmp_path / "nodes")})
    grid = InProcessGrid(client_app, simulation_node_configs(3), cfg.to_flower_config())
    summary = federated_run(cfg, grid, 1).execute()
    import json

    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    return summary, records


@pytest.mark.parametrize("noise", ["central", "local"])
def test_sparse_dp_releases_reach_the_ledger_and_audit_clean(tmp_path, noise):
    summary, records = _run(tmp_path, **{"dp.noise": noise})
    training = [r for r in records if r.get("rows_selected") is not None]
    assert len(training) == 3
    dense_bytes = 400 * (8 + 1) * 4 + 8 * 4 + 4  # the global part as dense float32 arrays
    for r in training:
        assert 0 < r["rows_selected"] < 400
        # local noise: a node sends the rows it selected; central: the raw sums' touched rows (positives and
        # sampled negatives: all 400 here) and its row counts, and the coordinator selects
        assert r["bytes_up_per_node"] < dense_bytes if noise == "local" else r["bytes_up_per_node"] > dense_bytes
    entries = read_jsonl(tmp_path / "run" / NAME)
    gradient = [e for e in entries if e["mechanism"] == "gradient"]
    assert len(gradient) == 9
    for e in gradient:
        assert e["row_threshold"] == 2.0
        assert composed_multiplier(e["selection_multiplier"], e["gradient_multiplier"]) == \
            pytest.approx(e["noise_multiplier"])
    result = CliRunner().invoke(app, ["audit", str(tmp_path / "run" / NAME), "--budget", "8.0"])
    assert result.exit_code == 0, result.output
    # a random ranking of 100 candidates scores 0.10; the DP noise is secret (OS entropy), so
    # the figure varies between runs (0.17-0.2 seen)
    assert summary.test["hr10"] > 0.15


def test_the_audit_recomputes_the_multiplier_from_the_two_parts(tmp_path):
    key = SigningKey.load_or_create(tmp_path / "node.key")
    ledger = NodeLedger(tmp_path / "ledger.jsonl")
    delta = 1e-5

    def entry(run: str, recorded_z: float, parts_z: float) -> None:
        z1, z2 = split_multiplier(parts_z, 0.1)
        ledger.append(key, {"run_id": run, "round": 1, "unit": "user", "noise_multiplier": recorded_z,
                            "sample_rate": 0.5, "steps": 1, "clip_norm": 0.1, "delta": delta, "accountant": "prv",
                            "epsilon": epsilon([(recorded_z, 0.5, 1)], delta), "epsilon_budget": 8.0,
                            "mechanism": "gradient", "noise": "local", "noise_share": 1.0, "row_threshold": 2.0,
                            "selection_multiplier": z1, "gradient_multiplier": z2})

    entry("honest", 1.0, 1.0)
    entry("lying", 1.0, 0.6)  # records the plan's z but its parts carry less noise: more epsilon was spent
    audits = {a.run_id: a for a in audit_entries(read_jsonl(tmp_path / "ledger.jsonl"))}
    assert audits["honest"].ok, audits["honest"].problems
    assert any("under-reported" in p for p in audits["lying"].problems)


def test_row_selection_and_sparse_dp_configurations():
    with pytest.raises(ConfigError, match=r"dp\.row-threshold"):
        RunConfig.from_mapping({**RELEASES, "dp.noise": "distributed"})
    with pytest.raises(ConfigError, match=r"dp\.row-threshold"):
        RunConfig.from_mapping({**RELEASES, "dp.mechanism": "local-sgd", "dp.frequency-share": 0.0})
    with pytest.raises(ConfigError, match=r"transport\.item-updates"):  # local noise on every row: nothing sparse
        RunConfig.from_mapping({**RELEASES, "dp.row-threshold": 0.0, "transport.item-updates": "sparse"})
    RunConfig.from_mapping({**RELEASES, "dp.row-threshold": 0.0, "dp.noise": "central",
                            "transport.item-updates": "sparse"})  # the raw sums are sparse; the coordinator noises
    with pytest.raises(ConfigError, match=r"transport\.item-updates"):
        RunConfig.from_mapping({"transport.item-updates": "sparse", "transport.secure-aggregation": True,
                                "dp.enabled": False})
