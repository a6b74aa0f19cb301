"""Deployment: a real TLS federation on 127.0.0.1 (SuperLink + SuperNode auth + 2 SuperNodes + `flwr run`),
and a node that restarts mid-run without forgetting its users or its spent budget.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import MessageType

from client.app import app as client_app
from client.state import NodeStateStore
from deploy.certs import CertPaths, create_ca_and_server, create_node_keys
from deploy.demo_data import make_demo_data
from deploy.federation import LocalDeployment, NodeSpec
from deploy.processes import alive
from server import checkpoint
from server.app import federated_run
from server.ledger import NAME
from shared.config import RunConfig
from shared.ledger import read_jsonl, verify_chain
from simulations.inprocess import InProcessGrid
from tests.support import MODEL_AVERAGING

# >= 100 users per node: keeps DP's Poisson batches non-empty on this tiny data
TINY = {**MODEL_AVERAGING,
        "model.name": "gmf", "model.embedding-dim": 16, "eval.full-rank": False, "federation.min-nodes": 2,
        "dp.enabled": True, "train.lr": 0.01}


def test_tls_federation_with_node_auth_completes_and_audits_clean(tmp_path):
    certs = CertPaths(tmp_path / "certs")
    create_ca_and_server(certs, ["127.0.0.1", "localhost"])
    create_node_keys(certs, ["edge-1", "edge-2", "intruder"])
    stranger = CertPaths(tmp_path / "other-ca")
    create_ca_and_server(stranger, ["127.0.0.1"])
    data = make_demo_data(tmp_path / "data", nodes=2, users=200, items=120, seed=3)
    nodes = [NodeSpec(f"edge-{i + 1}", data.nodes[i], tmp_path / f"state-{i + 1}", certs.node_key(f"edge-{i + 1}"))
             for i in range(2)]
    with LocalDeployment(tmp_path / "deployment", certs) as dep:
        superlink = dep.start_superlink(node_auth=True)
        for spec in nodes:
            dep.register(certs.node_pub(spec.name), spec.name)
        for spec in nodes:
            dep.start_supernode(spec)
        # a node whose key was never registered, and a node that trusts another CA
        intruder = dep.start_supernode(NodeSpec("intruder", data.nodes[0], tmp_path / "state-x",
                                                certs.node_key("intruder")))
        wrong_ca = dep.start_supernode(NodeSpec("wrong-ca", data.nodes[1], tmp_path / "state-y",
                                                certs.node_key("edge-2")), ca_cert=stranger.ca_cert,
                                       extra_args=["--max-retries", "1"])
        dep.wait_online(2)
        run = dep.run({**TINY, "federation.rounds": 2, "eval.every": 2, "data.catalog-path": str(data.catalog),
                       "federation.run-dir": str(tmp_path / "run")}, tmp_path / "run-config.toml")
        log = run.log_text()
        assert run.proc.returncode == 0, log[-3000:]
        assert "[fedrec] finished" in log
        intruder.proc.wait(timeout=120)
        wrong_ca.proc.wait(timeout=120)
        assert intruder.proc.returncode != 0 and "Failed to activate SuperNode" in intruder.log_text()
        assert wrong_ca.proc.returncode != 0 and "CERTIFICATE_VERIFY_FAILED" in wrong_ca.log_text()
        listed = dep.supernodes()
        assert len(listed) == 2 and all(n["status"] == "online" for n in listed)
        for proc in dep.processes:
            proc.remember_children()
        children = {p: t for proc in dep.processes for p, t in proc.seen.items()}
        assert superlink.seen  # the SuperLink's own children (SuperExec, ServerApp) are tracked too
    assert dep.leftovers() == [] and not any(alive(p, t) for p, t in children.items())
    assert not any(alive(proc.pid) for proc in dep.processes)

    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == [1, 2] and all(len(r["nodes"]) == 2 for r in records)
    assert records[-1]["val"]["count"] == 200
    ledger = tmp_path / "run" / NAME
    assert len(read_jsonl(ledger)) == 4
    audit = subprocess.run([sys.executable, "-m", "fedrec.cli", "audit", str(ledger), "--budget", "8.0"],
                           capture_output=True, text=True, check=False)
    assert audit.returncode == 0, audit.stdout + audit.stderr
    for i in (1, 2):  # node state lives in its state dir, with private files
        state = tmp_path / f"state-{i}"
        assert (state / "ledger.jsonl").stat().st_mode & 0o077 == 0
        assert len(list(state.glob("*/user_emb.pt"))) == 1 and len(list(state.glob("*/privacy.json"))) == 1


def _restart_run(tmp_path: Path, data, *, restart: bool, dp: bool) -> tuple[Path, dict]:
    """3 rounds, deployment-style node configs; with ``restart`` node 1000 loses its memory before round 2.

    Returns the run root and what node 1000 held in memory before round 2 and what it found again after.
    """
    root = tmp_path / f"{'restarted' if restart else 'steady'}-{'dp' if dp else 'plain'}"
    cfg = RunConfig.from_mapping({**TINY, "dp.enabled": dp, "federation.rounds": 3,
                                  "data.catalog-path": str(data.catalog),
                                  "federation.run-dir": str(root / "run"), "dp.target-epsilon": 4.0})
    configs = [{"data-path": str(p), "node-name": f"edge-{i + 1}", "state-dir": str(root / f"state-{i + 1}")}
               for i, p in enumerate(data.nodes)]
    seen: dict = {}

    def app(msg, ctx):
        rnd = msg.content["config"]["server-round"]
        if ctx.node_id == 1000 and msg.metadata.message_type == MessageType.TRAIN and rnd == 2:
            store = NodeStateStore(ctx.state, configs[0]["state-dir"], msg.content["config"]["run-key"])
            seen["before"] = {k: v.numpy().copy() for k, v in ctx.state["user-emb"].to_torch_state_dict().items()}
            fingerprint = str(ctx.state["node-meta"]["users"])
            if restart:
                for key in list(ctx.state.keys()):  # what a restarted SuperNode has: nothing in memory
                    del ctx.state[key]
            seen["after"] = {k: v.numpy() for k, v in (store.load_local(fingerprint) or {}).items()}
            seen["privacy"] = store.load_privacy()
        return client_app(msg, ctx)

    federated_run(cfg, InProcessGrid(app, configs, cfg.to_flower_config()), 1).execute()
    return root, seen


def test_node_restart_keeps_user_embeddings_and_spent_budget(tmp_path):
    data = make_demo_data(tmp_path / "data", nodes=2, users=200, items=120, seed=5)
    # non-private runs are seeded: the restarted node resumes exactly where it was, bit for bit
    (steady, _), (restarted, seen) = (_restart_run(tmp_path, data, restart=r, dp=False) for r in (False, True))
    a, b = checkpoint.load(steady / "run"), checkpoint.load(restarted / "run")
    assert all(np.array_equal(a.arrays[k], b.arrays[k]) for k in a.arrays)
    emb = [torch.load(next((r / "state-1").glob("*/user_emb.pt")), weights_only=True) for r in (steady, restarted)]
    assert emb[1]["round"] == 3 and emb[0]["users"] == emb[1]["users"]
    emb = [{k: v.numpy() for k, v in e["state"].items()} for e in emb]
    assert all(np.array_equal(emb[0][k], emb[1][k]) for k in emb[0])
    # under DP the noise is fresh OS entropy, so runs differ; the restarted node still finds its own embeddings
    # and its spend again, and its ledger continues the chain
    (steady, _), (restarted, seen) = (_restart_run(tmp_path, data, restart=r, dp=True) for r in (False, True))
    assert seen["after"].keys() == seen["before"].keys()
    assert all(np.array_equal(seen["after"][k], seen["before"][k]) for k in seen["before"])
    assert seen["privacy"] is not None and len(seen["privacy"]["history"]) == 1
    chains = [read_jsonl(r / "state-1" / "ledger.jsonl") for r in (steady, restarted)]
    assert [e["round"] for e in chains[1]] == [1, 2, 3] and not verify_chain(chains[1])
    assert [e["epsilon"] for e in chains[1]] == pytest.approx([e["epsilon"] for e in chains[0]])
    assert chains[1][-1]["epsilon"] <= 4.0 and chains[1][0]["epsilon"] < chains[1][-1]["epsilon"]
    # the coordinator holds one continued chain per node, not a second "fresh" one for the restarted node
    fed = read_jsonl(restarted / "run" / NAME)
    assert len({e["node_key_id"] for e in fed}) == 2 and len(fed) == 6


@pytest.mark.slow
def test_demo_script_with_secure_aggregation(tmp_path):
    """scripts/deploy_demo.sh end to end (about 2-3 minutes): SecAgg+ over real processes, audit, cleanup."""
    script = Path(__file__).resolve().parents[1] / "scripts" / "deploy_demo.sh"
    env = {**os.environ, "SECAGG": "true", "ROUNDS": "2", "FLOOR_BELOW": "0.0",  # train rounds despite 400 users
           "FEDREC_BIN": str(Path(sys.executable).parent)}
    out = subprocess.run(["bash", str(script), str(tmp_path / "demo")], capture_output=True, text=True, env=env,
                         check=False, stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "OK: 2 node chain(s) verified" in out.stdout
    records = [json.loads(x) for x in (tmp_path / "demo" / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == [1, 2] and all(r["secure_aggregation"] and len(r["nodes"]) == 2
                                                            for r in records)
    pids = [int(line.rsplit("pid ", 1)[1].rstrip(")")) for line in out.stdout.splitlines() if "(pid " in line]
    assert len(pids) == 3 and not any(alive(p) for p in pids)
