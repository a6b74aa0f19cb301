"""User-level DP with one user per node (cross-device): node = user, each round is DP-FedSGD over the sampled users.

Every node accounts only the rounds it is sampled for, the DP item-frequency release of round 0 included (no
amplification by the coordinator's sampling is claimed), so a user sampled in fewer rounds spends less; every
spend is in its signed chain and audits clean.
"""

from __future__ import annotations

from typer.testing import CliRunner

from fedrec.cli import app
from server.ledger import NAME
from shared.config import RunConfig
from shared.ledger import read_jsonl
from tests.support import federate, node_chains, records

USERS = 40
EPSILON = 150.0
CROSS_DEVICE_DP = {"data.synthetic-users": USERS, "data.synthetic-items": 60, "data.partitioner": "user-per-node",
                   "data.partitions": USERS, "federation.min-nodes": USERS, "federation.fraction-train": 0.5,
                   "federation.rounds": 3, "eval.full-rank": False, "model.name": "gmf", "model.embedding-dim": 8,
                   "model.item-bias": True, "dp.enabled": True, "dp.unit": "user", "dp.mechanism": "sgd",
                   "dp.noise": "central", "dp.sample-rate": 1.0, "dp.frequency-share": 0.1,
                   "dp.target-epsilon": EPSILON, "dp.delta": 1e-5, "dp.floor-below": 0.0, "train.user-epochs": 0}
# the recipe trains round(epsilon x DP user count / 1000) rounds (at most 3); round 0 samples half the nodes, so
# the DP user count is ~20: epsilon 150 gives 3 rounds, and at least 2 unless the noisy count falls below 10


def test_one_user_nodes_spend_only_in_the_rounds_they_are_sampled_for(tmp_path):
    cfg = RunConfig.from_mapping({**CROSS_DEVICE_DP, "federation.run-dir": str(tmp_path / "run"),
                                  "sim.node-state-dir": str(tmp_path / "nodes")})
    summary, _ = federate(cfg)
    assert summary.rounds_run >= 2
    sampled = {r["round"]: set(r["nodes"]) for r in records(tmp_path) if r.get("round", 0) >= 1 and "nodes" in r}
    assert all(len(nodes) == USERS // 2 for nodes in sampled.values())
    # each node's own chain holds a gradient spend for exactly the rounds the coordinator sampled it for
    for pid, chain in node_chains(tmp_path, USERS).items():
        assert [e["round"] for e in chain if e["mechanism"] == "gradient"] == \
            [r for r in sorted(sampled) if 1000 + pid in sampled[r]]
    chains: dict[str, list] = {}
    for e in read_jsonl(tmp_path / "run" / NAME):  # the copies the coordinator collected, which the audit reads
        chains.setdefault(e["node_key_id"], []).append(e)
    assert USERS // 2 <= len(chains) <= USERS  # a node that was never sampled has spent nothing
    counts = []
    for chain in chains.values():
        assert [e["round"] for e in chain] == sorted({e["round"] for e in chain})  # at most one spend a round
        gradient = [e for e in chain if e["mechanism"] == "gradient"]
        assert all(e["unit"] == "user" and e["steps"] == 1 and e["sample_rate"] == 1.0 for e in gradient)
        assert chain[-1]["epsilon"] <= EPSILON and chain[-1]["delta"] == 1e-5
        counts.append(len(gradient))
    # the coordinator samples half the nodes a round: the ledgers hold exactly the sampled rounds
    assert sum(counts) == sum(len(nodes) for nodes in sampled.values())
    assert min(counts) < max(counts)
    result = CliRunner().invoke(app, ["audit", str(tmp_path / "run" / NAME), "--budget", str(EPSILON)])
    assert result.exit_code == 0, result.output
