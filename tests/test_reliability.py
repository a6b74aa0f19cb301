"""Reliability under faults (in-process runtime, CI): dropouts with DP accounting, replays, robust aggregation.

The Flower-runtime versions (`fedrec simulate` through `flwr run`, a killed SuperLink) are in
tests/test_reliability_flwr.py (slow); a killed coordinator process is in tests/test_reliability_crash.py.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from server import checkpoint
from server.ledger import NAME as FEDERATION_LEDGER
from server.loop import initial_model
from server.robust import ReplayRegistry, update_digest
from shared.audit import audit_entries
from shared.config import RunConfig
from shared.errors import ConfigError
from shared.ledger import read_jsonl
from simulations.client_app import app as client_app
from simulations.faults import failing_partitions, hostile, node_fails
from simulations.server_app import InjectedFault
from tests.support import federate, make_cfg, node_chains, records

pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------- which nodes fail
def test_failing_nodes_are_an_exact_deterministic_fraction_per_round():
    for n, fraction in [(10, 0.1), (10, 0.3), (10, 0.5), (7, 0.5), (3, 1.0), (4, 0.0)]:
        chosen = [failing_partitions(42, r, n, fraction) for r in range(1, 41)]
        assert all(len(c) == round(fraction * n + 1e-9) for c in chosen)
        assert chosen == [failing_partitions(42, r, n, fraction) for r in range(1, 41)]
        if 0 < fraction < 1:
            assert len(set(chosen)) > 1  # a different set of nodes fails in different rounds
            assert chosen != [failing_partitions(7, r, n, fraction) for r in range(1, 41)]
    # node_fails agrees with the shared schedule; nodes without a partition id fail independently
    nc = {"partition-id": 3, "num-partitions": 10}
    assert [node_fails(42, 0.3, nc, 0, r) for r in range(1, 30)] == [
        3 in failing_partitions(42, r, 10, 0.3) for r in range(1, 30)]
    share = np.mean([node_fails(42, 0.3, {"node-name": f"n{i}"}, 0, r) for i in range(20) for r in range(100)])
    assert 0.25 < share < 0.35
    assert not any(node_fails(42, 0.0, nc, 0, r) for r in range(1, 30))


# ----------------------------------------------------------------------------- dropouts
def test_crashed_nodes_are_reported_and_spend_no_privacy(tmp_path):
    nodes, rounds = 4, 3
    cfg = make_cfg(tmp_path, nodes, **{"federation.rounds": rounds, "sim.fault-dropout": 0.5, "dp.enabled": True,
                                       "dp.target-epsilon": 3.0})
    summary, _ = federate(cfg)
    assert summary.rounds_run == rounds
    trained = Counter()
    for r in records(tmp_path):
        down = {1000 + p for p in failing_partitions(cfg.seed, r["round"], nodes, 0.5)}
        assert r["sampled"] == r["answered"] == nodes and r["missing"] == 0
        assert {n for n, _ in r["failed"]} == down and all("crashed before training" in why for _, why in r["failed"])
        assert set(r["nodes"]) == set(range(1000, 1000 + nodes)) - down
        trained.update(n - 1000 for n in r["nodes"])
    chains = node_chains(tmp_path, nodes)
    assert {p: len(c) for p, c in chains.items()} == {p: trained[p] for p in range(nodes)}  # a crash spent nothing
    federation = read_jsonl(tmp_path / "run" / FEDERATION_LEDGER)
    assert sorted(e["signature"] for e in federation) == sorted(e["signature"] for c in chains.values() for e in c)
    assert all(a.ok for a in audit_entries(federation))


def test_late_nodes_spend_and_their_spend_reaches_the_ledger_with_their_next_reply(tmp_path):
    nodes, rounds = 4, 4
    cfg = make_cfg(tmp_path, nodes, **{"federation.rounds": rounds, "sim.fault-dropout": 0.25, "sim.fault-mode": "late",
                                       "dp.enabled": True, "dp.target-epsilon": 3.0})
    summary, grid = federate(cfg)
    assert summary.rounds_run == rounds
    late = set()
    for r in records(tmp_path):
        down = {1000 + p for p in failing_partitions(cfg.seed, r["round"], nodes, 0.25)}
        assert r["sampled"] == nodes and r["answered"] == nodes - 1 and r["missing"] == 1 and not r["failed"]
        assert set(r["nodes"]) == set(range(1000, 1000 + nodes)) - down
        late |= {(n, r["round"]) for n in down}
    assert set(grid.late) == late
    chains = node_chains(tmp_path, nodes)
    assert all(len(c) == rounds for c in chains.values())  # every node trained (and spent) every round
    held: dict[str, list[dict]] = {}
    for e in read_jsonl(tmp_path / "run" / FEDERATION_LEDGER):
        held.setdefault(e["node_key_id"], []).append(e)
    delivered_late = 0
    for pid, chain in chains.items():
        last_reply = max(rnd for rnd in range(1, rounds + 1) if (1000 + pid, rnd) not in late)
        # the coordinator holds the node's chain up to its last delivered reply: nothing lost, nothing twice
        assert held[chain[0]["node_key_id"]] == chain[:last_reply]
        delivered_late += sum(1 for e in chain[:last_reply] if (1000 + pid, e["round"]) in late)
    assert delivered_late >= 1  # a late round's spend arrived with a later reply
    assert all(a.ok for a in audit_entries([e for c in held.values() for e in c]))


# ----------------------------------------------------------------------------- hostile replies
def test_non_conforming_replies_are_rejected_with_a_logged_reason(tmp_path, caplog):
    kinds = {0: "inf", 1: "dtype", 2: "keys", 3: "huge"}
    cfg = make_cfg(tmp_path, 6, **{"federation.rounds": 2})
    with caplog.at_level("WARNING", logger="flwr"):
        summary, _ = federate(cfg, wrap=lambda app: hostile(app, kinds))
    expect = {1000: "non-finite", 1001: "dtype", 1002: "array keys", 1003: "update norm"}
    for r in records(tmp_path):
        assert sorted(r["nodes"]) == [1004, 1005]
        reasons = dict(r["rejected"])
        assert set(reasons) == set(expect) and all(expect[n] in reasons[n] for n in expect)
    assert sum("rejected reply of node" in m for m in caplog.messages) == 8
    final = torch.load(tmp_path / "run" / "model.pt", weights_only=True)["global"]
    assert all(torch.isfinite(v).all() and v.dtype == torch.float32 for v in final.values())
    assert summary.val["hr10"] > 0.3


def test_replayed_and_copied_updates_are_rejected_also_after_a_resume(tmp_path):
    wrapped = hostile(client_app, {0: "replay", 1: "copy"})  # one wrapper: it remembers across the resume
    base = {"federation.rounds": 4}
    with pytest.raises(InjectedFault):
        federate(make_cfg(tmp_path, 4, **base, **{"sim.fail-after-round": 2}), wrap=lambda _: wrapped)
    assert len(checkpoint.load(tmp_path / "run").strategy_state["replay-registry"]["digests"]) >= 5
    federate(make_cfg(tmp_path, 4, **base, **{"federation.resume-from": str(tmp_path / "run")}), wrap=lambda _: wrapped)
    rs = records(tmp_path)
    assert [r["round"] for r in rs] == [1, 2, 3, 4]
    assert 1000 in rs[0]["nodes"]  # round 1: the replaying node sent its honest update
    for r in rs[1:]:  # then it re-sends it, and the copier sends another node's update: both rejected
        reasons = dict(r["rejected"])
        assert set(reasons) == {1000, 1001} and sorted(r["nodes"]) == [1002, 1003]
        assert "replayed update" in reasons[1000] and "round 1" in reasons[1000]
        assert any(w in reasons[1001] for w in ("replayed update", "duplicate update"))


def test_replay_registry_survives_a_checkpoint_and_ignores_an_unchanged_model():
    reg = ReplayRegistry()
    a = update_digest({"w": np.ones((2, 2), np.float32)})
    b = update_digest({"w": np.ones((2, 2), np.float64)})  # same values, other dtype: another update
    reg.add(a, 3, 2**64 - 5)  # Flower node ids are unsigned 64-bit
    assert a != b and reg.problem(b) is None and "round 3" in reg.problem(a)
    assert "this round" in reg.problem(b, {b: 7})
    again = ReplayRegistry()
    again.restore({k: torch.from_numpy(v).numpy() for k, v in reg.state().items()})
    assert again.seen == reg.seen


# ----------------------------------------------------------------------------- robust aggregation
def test_robust_aggregation_config_rejects_impossible_combinations():
    RunConfig.from_mapping({"federation.aggregation": "median", "federation.norm-bound": 2.0})
    with pytest.raises(ConfigError, match="aggregation"):
        RunConfig.from_mapping({"federation.aggregation": "trimmed-mean", "federation.strategy": "fedadam"})
    with pytest.raises(ConfigError, match="aggregation"):
        RunConfig.from_mapping({"federation.aggregation": "median", "dp.enabled": True, "dp.unit": "node"})
    with pytest.raises(ConfigError, match="secure aggregation"):
        RunConfig.from_mapping({"federation.norm-bound": 1.0, "transport.secure-aggregation": True})
    with pytest.raises(ConfigError, match="trim-fraction"):
        RunConfig.from_mapping({"federation.trim-fraction": 0.5})


def test_norm_bound_scales_every_long_update_down(tmp_path):
    cfg = make_cfg(tmp_path, 3, **{"federation.rounds": 1, "federation.norm-bound": 0.5})
    init, _ = initial_model(cfg)
    federate(cfg)
    (r,) = records(tmp_path)
    assert sorted(n for n, _ in r["norm_bounded"]) == [1000, 1001, 1002] and all(x > 0.5 for _, x in
                                                                                 r["norm_bounded"])
    final = checkpoint.load(tmp_path / "run").arrays
    moved = np.sqrt(sum(((final[k].astype(np.float64) - init[k].numpy()) ** 2).sum() for k in final))
    assert 0.1 < moved <= 0.5 + 1e-5  # the average of updates of norm 0.5 is at most 0.5 long


@pytest.mark.parametrize("aggregation", ["median", "trimmed-mean"])
def test_robust_aggregation_runs_and_learns(tmp_path, aggregation):
    cfg = make_cfg(tmp_path, 5, **{"federation.rounds": 2, "federation.aggregation": aggregation,
                                   "federation.trim-fraction": 0.2})
    summary, _ = federate(cfg)
    assert summary.rounds_run == 2 and summary.val["hr10"] > 0.4
    rs = records(tmp_path)
    assert rs[1]["val"]["hr10"] > rs[0]["val"]["hr10"] - 0.05 and all(len(r["nodes"]) == 5 for r in rs)


# ----------------------------------------------------------------------------- poisoning
def test_a_poisoning_node_promotes_its_target_unless_the_aggregation_is_robust(tmp_path):
    from simulations.benchmarks.reliability import target_exposure, target_item
    from simulations.faults import poisoning

    base = {"data.synthetic-users": 300, "data.synthetic-items": 300, "federation.rounds": 4}
    target = target_item(make_cfg(tmp_path, 5, **base))
    exposure = {}
    for name, extra, attacked in [("clean", {}, False), ("mean", {}, True),
                                  ("median", {"federation.aggregation": "median"}, True),
                                  ("trimmed", {"federation.aggregation": "trimmed-mean"}, True)]:
        cfg = make_cfg(tmp_path / name, 5, **base, **extra)
        federate(cfg, wrap=(lambda app: poisoning(app, 0, target, boost=300.0)) if attacked else None)
        exposure[name] = target_exposure(tmp_path / name / "run", target, [1, 2, 3, 4])
    top = {k: v["target_in_top10"] for k, v in exposure.items()}
    rank = {k: v["target_mean_rank"] for k, v in exposure.items()}
    assert top["clean"] < 0.1 and top["mean"] > 0.5 and rank["mean"] < rank["clean"] / 3  # works on a plain mean
    for robust in ("median", "trimmed"):  # ... not on robust aggregation: about where it was without the attack
        assert top[robust] < 0.15 and rank[robust] > 0.8 * rank["clean"]
