"""Faults through the Flower runtime (`fedrec simulate` = `flwr run` on a local SuperLink with Ray). Slow.

    .venv/bin/python -m pytest -m slow tests/test_reliability_flwr.py

- dropouts: ``fault-mode = crash`` (the ClientApp raises: an Error reply) and ``late`` (the ClientApp
  sleeps past ``round-timeout``: the coordinator stops waiting), with DP accounting checked per node;
- coordinator crash: the ServerApp process (``flwr-simulation``) is SIGKILLed by PID once round 2 is
  checkpointed, ``fedrec simulate --resume`` continues the run, and the result is compared with an
  uninterrupted run of the same seed. Every process the test started is stopped by PID.
"""

from __future__ import annotations

import contextlib
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
from shared.audit import audit_entries
from shared.errors import FedrecError
from shared.ledger import read_jsonl
from simulations.driver import simulate
from simulations.faults import failing_partitions
from tests.support import MODEL_AVERAGING, REPO

pytestmark = pytest.mark.slow
BASE = {**{k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in MODEL_AVERAGING.items()},
        "data.partitions": "2", "federation.min-nodes": "2", "data.synthetic-users": "200",
        "data.synthetic-items": "300", "model.name": "gmf",
        "train.lr": "0.01", "eval.full-rank": "false"}


def metrics(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def chains(run: Path, nodes: int) -> dict[int, list[dict]]:
    key = json.loads((run / "summary.json").read_text())["run_key"]
    return {p: [e for e in read_jsonl(run / "nodes" / f"partition-{p}" / "ledger.jsonl") if e["run_id"] == key]
            for p in range(nodes)}


def test_crashing_nodes_through_the_flower_runtime(tmp_path):
    run = tmp_path / "run"
    result = simulate("synthetic", {**BASE, "federation.rounds": "3", "sim.fault-dropout": "0.5", "dp.enabled": "true",
                                    "dp.target-epsilon": "3.0"}, run, show_progress=False)
    assert result.summary["rounds_run"] == 3
    trained = {0: 0, 1: 0}
    for r in metrics(run):
        assert r["sampled"] == r["answered"] == 2 and len(r["failed"]) == 1 and len(r["nodes"]) == 1
        assert "crashed before training" in r["failed"][0][1]
        (down,) = failing_partitions(42, r["round"], 2, 0.5)
        trained[1 - down] += 1
    own = chains(run, 2)
    assert {p: len(c) for p, c in own.items()} == trained  # a crashed node recorded no spend
    federation = read_jsonl(run / FEDERATION_LEDGER)
    assert sorted(e["signature"] for e in federation) == sorted(e["signature"] for c in own.values() for e in c)
    assert all(a.ok for a in audit_entries(federation))


def test_late_nodes_through_the_flower_runtime(tmp_path):
    run = tmp_path / "run"
    result = simulate("synthetic", {**BASE, "federation.rounds": "2", "sim.fault-dropout": "0.5",
                                    "sim.fault-mode": "late",
                                    # 60 s: a fresh Ray ClientApp process with DP needs more than 20 s here
                                    "federation.round-timeout": "60", "dp.enabled": "true", "dp.target-epsilon": "3.0"},
                      run, show_progress=False)
    assert result.summary["rounds_run"] == 2
    for r in metrics(run):
        assert r["sampled"] == 2 and r["answered"] == 1 and r["missing"] == 1 and not r["failed"]
    own = chains(run, 2)
    assert all(len(c) == 2 for c in own.values())  # the late node trained and spent every round
    held = read_jsonl(run / FEDERATION_LEDGER)
    assert {e["signature"] for e in held} <= {e["signature"] for c in own.values() for e in c}
    assert all(a.ok for a in audit_entries(held))


# ----------------------------------------------------------------------------- coordinator crash
def _start_time(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def process_tree(root: int) -> dict[int, str]:
    """``root`` and its descendants: pid -> start time (to never signal a reused pid)."""
    children: dict[int, list[int]] = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(proc.name))
    tree, todo = {}, [root]
    while todo:
        pid = todo.pop()
        if (start := _start_time(pid)) is not None:
            tree[pid] = start
            todo += children.get(pid, [])
    return tree


def stop_tree(tree: dict[int, str]) -> None:
    for pid, start in tree.items():
        if _start_time(pid) == start:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _round(run: Path) -> int:
    try:
        return checkpoint.load(run).round
    except FedrecError:
        return 0


def fedrec(*args: str) -> list[str]:
    return [str(Path(sys.executable).parent / "fedrec"), *args]


def test_killed_serverapp_resumes_with_fedrec_simulate_resume(tmp_path):
    crashed, clean = tmp_path / "crashed", tmp_path / "clean"
    sets = [x for k, v in {**BASE, "federation.rounds": "4", "dp.enabled": "true", "dp.target-epsilon": "3.0"}.items()
            for x in ("--set", f"{k}={v}")]
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0"}
    proc = subprocess.Popen(fedrec("simulate", "--quiet", "--out", str(crashed), *sets), cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    seen: dict[int, str] = {}
    try:
        deadline = time.monotonic() + 600  # a hang guard, not a performance assertion
        while _round(crashed) < 2:
            assert proc.poll() is None and time.monotonic() < deadline, "the run ended before the kill point"
            time.sleep(0.1)
        seen = process_tree(proc.pid)
        servers = [p for p in seen if b"flwr-simulation" in Path(f"/proc/{p}/cmdline").read_bytes()]
        assert servers, "no ServerApp process found"
        for pid in servers:  # the coordinator dies
            os.kill(pid, signal.SIGKILL)
        proc.wait(timeout=300)
    finally:
        stop_tree({**seen, **process_tree(proc.pid)})  # Ray helpers outlive their parent
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0 and not (crashed / "summary.json").exists()
    killed_at = _round(crashed)
    assert killed_at in (2, 3)
    resumed = subprocess.run(fedrec("simulate", "--quiet", "--resume", str(crashed)), cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    log = (crashed / "flwr.log").read_text()
    assert f"resuming {crashed.resolve()} after round {killed_at}" in log
    rs = metrics(crashed)
    assert [r["round"] for r in rs] == [1, 2, 3, 4]
    own = chains(crashed, 2)
    federation = read_jsonl(crashed / FEDERATION_LEDGER)
    ids = [(e["node_key_id"], e["seq"]) for e in federation]
    assert len(ids) == len(set(ids))  # nothing twice
    assert sorted(e["signature"] for e in federation) == sorted(e["signature"] for c in own.values() for e in c)
    assert all(a.ok for a in audit_entries(federation))
    reference = simulate("synthetic", {**BASE, "federation.rounds": "4", "dp.enabled": "true",
                                       "dp.target-epsilon": "3.0"},
                         clean, show_progress=False).summary["test"]
    test = json.loads((crashed / "summary.json").read_text())["test"]
    p, n = (test["hr10"] + reference["hr10"]) / 2, test["count"]
    assert abs(test["hr10"] - reference["hr10"]) <= 3 * math.sqrt(2 * p * (1 - p) / n) + 1e-9
