"""DP federation end to end (in-process runtime): budgets hold, the ledger audits clean."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from fedrec.cli import app
from server.ledger import NAME
from shared.ledger import read_jsonl
from tests.support import cfg_for, federate


def test_dp_run_records_a_verifiable_ledger_and_refuses_past_its_budget(tmp_path):
    base = {"dp.enabled": True, "dp.target-epsilon": 3.0, "sim.node-state-dir": str(tmp_path / "nodes"),
            "federation.rounds": 2}
    summary, _ = federate(cfg_for(tmp_path, **base))
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(0 < r["epsilon_max"] <= 3.0 for r in records)
    assert records[1]["epsilon_max"] > records[0]["epsilon_max"]
    entries = read_jsonl(tmp_path / "run" / NAME)
    assert len(entries) == 3 * 2 and {e["unit"] for e in entries} == {"user"}
    assert max(e["epsilon"] for e in entries) <= 3.0
    # the plan covered 2 rounds: continuing the run for 2 more makes every node refuse, and the run goes on
    summary = federate(cfg_for(tmp_path, **{**base, "federation.rounds": 4,
                                                  "federation.resume-from": str(tmp_path / "run")}))[0]
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == [1, 2, 3, 4] and summary.rounds_run == 4
    for r in records[2:]:
        assert len(r["failed"]) == 3 and all("privacy budget" in why for _, why in r["failed"])
        assert r["nodes"] == []
    assert len(read_jsonl(tmp_path / "run" / NAME)) == 6  # no spend was recorded for refused rounds
    result = CliRunner().invoke(app, ["audit", str(tmp_path / "run" / NAME), "--budget", "3.0"])
    assert result.exit_code == 0, result.output


def test_interaction_unit_trains_the_whole_model_privately(tmp_path):
    base = {"dp.enabled": True, "dp.unit": "interaction", "dp.target-epsilon": 8.0, "federation.rounds": 1,
            "sim.node-state-dir": str(tmp_path / "nodes"), "dp.sample-rate": 0.05}
    federate(cfg_for(tmp_path, **base))
    entries = read_jsonl(tmp_path / "run" / NAME)
    assert {e["unit"] for e in entries} == {"interaction"} and all(e["epsilon"] <= 8.0 for e in entries)
    # one epoch is 1/q Poisson steps (q = 1/ceil(n / round(0.05 n)), so 20 or 21 steps)
    assert {e["steps"] for e in entries} <= {20, 21}
    assert all(abs(e["sample_rate"] - 1 / e["steps"]) < 1e-12 for e in entries)


def test_node_level_dp_clips_every_update_and_the_coordinator_signs_its_spend(tmp_path):
    import numpy as np
    from flwr.app import MessageType

    sent: dict[int, dict] = {}
    norms = []

    def wrap(app):
        def call(msg, ctx):
            if msg.metadata.message_type == MessageType.TRAIN:
                sent[ctx.node_id] = {k: a.numpy() for k, a in msg.content["arrays"].items()}
            reply = app(msg, ctx)
            if msg.metadata.message_type == MessageType.TRAIN and not reply.has_error():
                new = {k: a.numpy() for k, a in reply.content["arrays"].items()}
                norms.append(float(np.sqrt(sum(((new[k] - sent[ctx.node_id][k]) ** 2).sum() for k in new))))
            return reply
        return call

    base = {"dp.enabled": True, "dp.unit": "node", "dp.target-epsilon": 6.0, "dp.clip-norm": 0.5,
            "federation.rounds": 3,
            "sim.node-state-dir": str(tmp_path / "nodes")}
    federate(cfg_for(tmp_path, **base), wrap=wrap)
    assert norms and max(norms) <= 0.5 + 1e-4  # every node's update was clipped to the coordinator's norm
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == [1, 2, 3]
    eps = [r["epsilon_node_level"] for r in records]
    assert eps == sorted(eps) and 0 < eps[-1] <= 6.0
    entries = read_jsonl(tmp_path / "run" / NAME)
    assert {e["unit"] for e in entries} == {"node"} and len(entries) == 3  # one signed entry per released round
    result = CliRunner().invoke(app, ["audit", str(tmp_path / "run" / NAME), "--budget", "6.0"])
    assert result.exit_code == 0, result.output
    # the plan covered 3 rounds: continuing the run stops before spending past the budget
    summary = federate(cfg_for(tmp_path, **{**base, "federation.rounds": 5,
                                                  "federation.resume-from": str(tmp_path / "run")}))[0]
    assert summary.rounds_run == 3 and len(read_jsonl(tmp_path / "run" / NAME)) == 3
