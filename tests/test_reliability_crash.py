"""Coordinator crash (CI version): SIGKILL a coordinator process mid-run, resume it, compare with a clean run.

The coordinator here is a child Python process running the real round loop over the in-process Grid (no
Ray). It is killed by PID either right after round 2 is checkpointed (before any node trains round 3), or
in the middle of round 3, once a node has trained it and recorded its privacy spend (the round is then
redone after the restart, and the node's ledger shows that it ran twice). The Flower-runtime version
(kill the SuperLink of `fedrec simulate`, then `fedrec simulate --resume`) is in tests/test_reliability_flwr.py.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from server import checkpoint
from server.ledger import NAME as FEDERATION_LEDGER
from shared.audit import audit_entries, audit_run
from shared.errors import FedrecError
from shared.ledger import read_jsonl
from shared.manifest import NAME as MANIFEST
from tests.support import MODEL_AVERAGING, REPO, federate, make_cfg, node_chains, records

pytestmark = pytest.mark.usefixtures("one_thread")
CHILD = """
import json, sys, torch
torch.set_num_threads(1)
from shared.config import RunConfig
from simulations.benchmarks.common import run_federation_inprocess
from pathlib import Path
run_federation_inprocess(RunConfig.from_mapping(json.loads(sys.argv[1])), Path(sys.argv[2]))
"""
NODES, ROUNDS = 3, 4
DP = {**MODEL_AVERAGING, "federation.rounds": ROUNDS, "dp.enabled": True, "dp.target-epsilon": 3.0}


def checkpointed_round(run_dir: Path) -> int:
    try:
        return checkpoint.load(run_dir).round
    except FedrecError:  # not written yet
        return 0


def spent_in_round(nodes_dir: Path, rnd: int) -> bool:
    """Whether some node has recorded a privacy spend for round ``rnd``."""
    for path in nodes_dir.glob("partition-*/ledger.jsonl"):
        try:
            if any(e.get("round") == rnd for e in read_jsonl(path)):
                return True
        except FedrecError:  # a line being appended right now
            continue
    return False


def kill_when(cfg, run_dir: Path, ready, limit: float = 300.0) -> None:
    """Start the coordinator in a child process; SIGKILL it (by PID) as soon as ``ready()`` holds."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "FLWR_TELEMETRY_ENABLED": "0"}
    proc = subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(cfg.to_flower_config()), str(run_dir)],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + limit  # a hang guard, not a performance assertion
        while not ready():
            assert proc.poll() is None, f"the coordinator exited early:\n{proc.stderr.read()[-2000:]}"
            assert time.monotonic() < deadline, "the coordinator did not reach the kill point"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL, "the coordinator finished before it could be killed"


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The same runs without a crash: private (noise from OS entropy) and non-private (seeded)."""
    out = {}
    for dp in (True, False):
        tmp = tmp_path_factory.mktemp("clean")
        out[dp] = federate(make_cfg(tmp, NODES, **{**DP, "dp.enabled": dp}))[0]
    return out


# between rounds with DP is the slow variant (run with -m slow): mid-round with DP covers the ledger/budget path
@pytest.mark.parametrize(("when", "dp"), [("between-rounds", False),
                                          pytest.param("between-rounds", True, marks=pytest.mark.slow),
                                          ("mid-round", True)])
def test_killed_coordinator_resumes_without_losing_or_duplicating_anything(tmp_path, uninterrupted, when, dp):
    crashed = tmp_path / "crashed"
    settings = {**DP, "dp.enabled": dp}
    cfg = make_cfg(crashed, NODES, **settings)
    if when == "between-rounds":
        kill_when(cfg, crashed / "run", lambda: checkpointed_round(crashed / "run") >= 2)
    else:
        kill_when(cfg, crashed / "run", lambda: spent_in_round(crashed / "nodes", 3))
    assert checkpointed_round(crashed / "run") in (2, 3)
    # restart with resume: the run continues after its last checkpoint
    summary, _ = federate(make_cfg(crashed, NODES, **settings, **{"federation.resume-from": str(crashed / "run")}))
    rs = records(crashed)
    assert [r["round"] for r in rs] == list(range(1, ROUNDS + 1)) and summary.rounds_run == ROUNDS
    reference = uninterrupted[dp]
    if not dp:  # seeded: the resumed run is the uninterrupted one, bit for bit
        assert summary.test == reference.test
        return
    # the federation ledger holds exactly the nodes' own chains: no entry lost, none twice, all verify
    chains = node_chains(crashed, NODES)
    federation = read_jsonl(crashed / "run" / FEDERATION_LEDGER)
    ids = [(e["node_key_id"], e["seq"]) for e in federation]
    assert len(ids) == len(set(ids))
    assert sorted(e["signature"] for e in federation) == sorted(e["signature"] for c in chains.values() for e in c)
    assert all(a.ok for a in audit_entries(federation)), [a.problems for a in audit_entries(federation)]
    # ... and audits clean against the coordinator's manifest, across the restart
    report = audit_run(federation, manifest=read_jsonl(crashed / "run" / MANIFEST))
    assert report.ok and report.manifest.closed, (report.problems, [a.problems for a in report.nodes])
    redone = any(len(c) != len({e["round"] for e in c}) for c in chains.values())
    assert redone == (when == "mid-round")  # a round that ran twice is in the chain twice
    assert all(ROUNDS - 1 <= len(c) <= ROUNDS + 1 for c in chains.values())
    # DP noise is fresh in every run, so the private runs agree within sampling noise only
    n = summary.test["count"]
    p = (summary.test["hr10"] + reference.test["hr10"]) / 2
    assert abs(summary.test["hr10"] - reference.test["hr10"]) <= 3 * math.sqrt(2 * p * (1 - p) / n) + 1e-9


def test_resume_refuses_a_corrupt_checkpoint_with_a_clear_error(tmp_path):
    cfg = make_cfg(tmp_path, 2, **{"federation.rounds": 2, "sim.fail-after-round": 1})
    with pytest.raises(RuntimeError):
        federate(cfg)
    (tmp_path / "run" / "checkpoint.pt").write_bytes(b"\x00garbage")
    with pytest.raises(FedrecError, match="unreadable checkpoint"):
        federate(make_cfg(tmp_path, 2, **{"federation.rounds": 2, "federation.resume-from": str(tmp_path / "run")}))
