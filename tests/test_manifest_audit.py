"""The coordinator's run manifest makes omissions visible: every truncation, drop or splice is a violation."""

from __future__ import annotations

import re

import pytest
from flwr.app import RecordDict
from typer.testing import CliRunner

from client.privacy import PrivacyAccount
from client.state import NodeStateStore
from fedrec.cli import app
from server.ledger import NAME as LEDGER
from shared.config import RunConfig
from shared.datasets import synthetic_tables
from shared.errors import FedrecError
from shared.interactions import InteractionData
from shared.ledger import read_jsonl, write_jsonl
from shared.manifest import NAME as MANIFEST
from tests.support import MODEL_AVERAGING, cfg_for, federate

BASE = {**MODEL_AVERAGING, "dp.enabled": True, "dp.target-epsilon": 3.0, "federation.rounds": 3}


@pytest.fixture(scope="module")
def honest(tmp_path_factory):
    """A finished 3-node, 3-round DP run (in-process runtime)."""
    tmp = tmp_path_factory.mktemp("honest")
    federate(cfg_for(tmp, **BASE, **{"sim.node-state-dir": str(tmp / "nodes")}))
    return tmp


def audit(directory, entries=None, manifest=None, *args):
    """Write (possibly tampered) ledger and manifest into ``directory`` and run `fedrec audit` on them."""
    directory.mkdir(parents=True, exist_ok=True)
    if entries is not None:
        write_jsonl(directory / LEDGER, entries)
    if manifest is not None:
        write_jsonl(directory / MANIFEST, manifest)
    result = CliRunner().invoke(app, ["audit", str(directory / LEDGER), *args], terminal_width=80)
    if isinstance(result.exception, FedrecError):  # what the console script prints as one line, exit 2
        return 2, str(result.exception)
    return result.exit_code, result.output


def ledger_of(run) -> list[dict]:
    return read_jsonl(run / "run" / LEDGER)


def manifest_of(run) -> list[dict]:
    return read_jsonl(run / "run" / MANIFEST)


def test_an_honest_run_audits_clean_against_its_manifest(honest):
    code, out = audit(honest / "run", None, None, "--budget", "3.0")
    assert code == 0, out
    assert "OK: 3 node chain(s) verified against the coordinator's manifest" in out
    rows = manifest_of(honest)
    assert [r["kind"] for r in rows] == ["round", "round", "round", "close"]
    assert all(len(r["trained"]) == 3 and len(r["entries"]) == 3 for r in rows[:3])
    report = (honest / "run" / "federation_ledger-audit.md").read_text()
    assert "Manifest: run" in report and "3 round(s), 9 ledger entries acknowledged, closed" in report


def by_node(entries):
    nodes: dict[str, list[dict]] = {}
    for e in entries:
        nodes.setdefault(e["node_key_id"], []).append(e)
    return nodes


def test_a_truncated_chain_is_a_violation(honest, tmp_path):
    entries = ledger_of(honest)
    victim = sorted(by_node(entries))[0]
    cut = [e for e in entries if not (e["node_key_id"] == victim and e["seq"] >= 1)]  # keep round 1 only
    code, out = audit(tmp_path, cut, manifest_of(honest))
    assert code == 1 and f"node {victim}" in out and "chain truncated after seq 0" in out, out


def test_a_node_dropped_from_the_ledger_is_a_violation_and_named_registered(honest, tmp_path):
    entries = ledger_of(honest)
    victim = sorted(by_node(entries))[1]
    keys = tmp_path / "keys.txt"
    keys.write_text("\n".join(sorted(by_node(entries))) + "\n")
    rest = [e for e in entries if e["node_key_id"] != victim]
    code, out = audit(tmp_path, rest, manifest_of(honest), "--node-keys", str(keys))
    assert code == 1 and f"node {victim} (a registered node): dropped from the ledger" in out, out
    assert "received 3 entries from it" in out


def test_a_missing_middle_entry_is_a_violation(honest, tmp_path):
    entries = ledger_of(honest)
    victim = sorted(by_node(entries))[2]
    holed = [e for e in entries if not (e["node_key_id"] == victim and e["seq"] == 1)]
    code, out = audit(tmp_path, holed, manifest_of(honest))
    assert code == 1 and "entry seq 1 (round 2) received by the coordinator is missing" in out, out


def test_an_entry_for_a_round_the_node_did_not_train_is_a_violation(honest, tmp_path):
    """The node's own chain, one entry longer than what the coordinator received: not in the manifest."""
    entries = ledger_of(honest)
    run_key = entries[0]["run_id"]
    state = honest / "nodes" / "partition-0"
    data = InteractionData.from_tables(synthetic_tables(42, 60, 100))  # unused: the run's plan is on disk
    account = PrivacyAccount(NodeStateStore(RecordDict(), state, run_key), RunConfig.from_mapping(BASE), data)
    extra = account.record(7, 1)  # a spend the coordinator never received
    longer = [*entries, extra]
    code, out = audit(tmp_path, longer, manifest_of(honest))
    assert code == 1 and "(round 7) is not in the coordinator's manifest" in out, out


def test_an_entry_spliced_from_another_run_is_a_violation(honest, tmp_path):
    """Same node keys (same node state), a second run: its entries do not belong to the first run."""
    other = tmp_path / "other"
    federate(cfg_for(other, **{**BASE, "sim.node-state-dir": str(honest / "nodes"), "federation.rounds": 1}))
    foreign = ledger_of(other)[0]
    entries = ledger_of(honest)
    assert foreign["node_key_id"] in by_node(entries) and foreign["run_id"] != entries[0]["run_id"]
    code, out = audit(tmp_path / "spliced", [*entries, foreign], manifest_of(honest))
    assert code == 1 and "spliced from another run" in out, out


@pytest.mark.parametrize("how", ["edit", "delete", "forge-key"])
def test_a_tampered_manifest_is_a_violation(honest, tmp_path, how):
    rows = [dict(r) for r in manifest_of(honest)]
    if how == "edit":
        rows[1]["entries"] = rows[1]["entries"][:1]  # acknowledge less, keep the old signature
        expect = "coordinator signature does not verify"
    elif how == "delete":
        del rows[1]
        expect = "manifest chain broken"
    else:
        expect = "signed by coordinator key"
    args = ("--coordinator-key", "0000") if how == "forge-key" else ()
    code, out = audit(tmp_path, ledger_of(honest), rows, *args)
    assert code == 1 and expect in out, out


def test_without_a_manifest_the_audit_refuses_unless_told(tmp_path, honest):
    code, out = audit(tmp_path, ledger_of(honest))
    assert code == 2 and "no coordinator manifest" in out
    code, out = audit(tmp_path, None, None, "--no-manifest")
    assert code == 0 and "no manifest: chains only" in out


def test_refusing_nodes_and_a_resumed_run_still_audit_clean(tmp_path):
    """Nodes refuse past their planned budget (no entry, no acknowledgement); the manifest holds across resume."""
    base = {**BASE, "federation.rounds": 2, "sim.node-state-dir": str(tmp_path / "nodes")}
    federate(cfg_for(tmp_path, **base))
    federate(cfg_for(tmp_path, **{**base, "federation.rounds": 3,
                                        "federation.resume-from": str(tmp_path / "run")}))
    rows = manifest_of(tmp_path)
    assert [r["kind"] for r in rows] == ["round", "round", "close", "round", "close"]
    assert rows[3]["trained"] == [] and rows[3]["entries"] == []  # every node refused round 3
    code, out = audit(tmp_path / "run", None, None, "--budget", "3.0")
    assert code == 0, out


def test_the_report_is_readable_at_80_columns(honest):
    code, out = audit(honest / "run")
    assert code == 0
    assert "…" not in out
    lines = [x for x in out.splitlines() if x.startswith("node ")]
    assert len(lines) == 3
    for line in lines:
        assert re.search(r"node [0-9a-f]{16} run [0-9a-f]{8}: ok; epsilon \d\.\d{4} \(recomputed \d\.\d{4}\) of "
                         r"budget 3, user-level, delta 1e-05, prv, local noise, 3 rounds, \d+ steps", line), line
