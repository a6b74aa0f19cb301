"""The signed privacy ledger and `fedrec audit`: intact ledgers pass, every tampering is caught."""

from __future__ import annotations

import json

import pytest
from flwr.app import RecordDict
from typer.testing import CliRunner

from client.privacy import PrivacyAccount
from client.state import NodeStateStore
from fedrec.cli import app
from shared.audit import audit_entries
from shared.config import RunConfig
from shared.datasets import synthetic_tables
from shared.interactions import InteractionData
from shared.ledger import SigningKey, read_jsonl, verify_chain, write_jsonl

runner = CliRunner()


@pytest.fixture(scope="module")
def ledger_entries(tmp_path_factory) -> list[dict]:
    data = InteractionData.from_tables(synthetic_tables(42, 60, 100))
    cfg = RunConfig.from_mapping({"dp.enabled": True, "dp.mechanism": "local-sgd", "dp.noise": "local",
                                  "federation.rounds": 3, "dp.target-epsilon": 2.0})
    entries = []
    for node in ("a", "b"):
        root = tmp_path_factory.mktemp(node)
        account = PrivacyAccount(NodeStateStore(RecordDict(), root, "run-1"), cfg, data)
        for rnd in (1, 2, 3):
            account.record(rnd, account.plan.steps_per_round)
        entries += account.chain()
    return entries


def audit_cli(tmp_path, entries, *args):
    path = tmp_path / "ledger.jsonl"
    write_jsonl(path, entries)
    result = runner.invoke(app, ["audit", str(path), "--no-manifest", *args])  # chain-level checks only
    return result.exit_code, result.output


def test_intact_ledger_passes_and_writes_a_report(tmp_path, ledger_entries):
    code, out = audit_cli(tmp_path, ledger_entries, "--budget", "2.0")
    assert code == 0, out
    assert "OK: 2 node chain(s) verified" in out
    report = (tmp_path / "ledger-audit.md").read_text()
    assert "user-level" in report and "| ok |" in report
    assert (tmp_path / "ledger-audit.png").stat().st_size > 1000
    audits = audit_entries(ledger_entries)
    assert all(a.ok and len(a.rounds) == 3 and a.final_epsilon <= 2.0 for a in audits)
    assert all(abs(r - c) / c < 0.01 for a in audits for r, c in zip(a.recorded, a.recomputed, strict=True))


def tampered(entries, how):
    rows = [dict(e) for e in entries]
    if how == "edit":
        rows[1]["epsilon"] = rows[1]["epsilon"] / 2  # claim less spend, keep the old signature
    elif how == "delete":
        del rows[1]
    elif how == "reorder":
        rows[0], rows[1] = rows[1], rows[0]
    elif how == "forge":
        other = SigningKey.__new__(SigningKey)
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        SigningKey.__init__(other, Ed25519PrivateKey.generate())
        body = {k: v for k, v in rows[2].items() if k != "signature"}
        body["noise_multiplier"] *= 2
        rows[2] = {**body, "signature": other.sign(body)["signature"]}  # signed by someone else's key
    return rows


@pytest.mark.parametrize("how", ["edit", "delete", "reorder", "forge"])
def test_tampering_is_detected(tmp_path, ledger_entries, how):
    code, out = audit_cli(tmp_path, tampered(ledger_entries, how))
    assert code == 1 and "VIOLATION" in out, out


def test_a_node_lying_about_epsilon_is_caught_by_recomputation(tmp_path, ledger_entries):
    """Even a correctly signed chain fails if its epsilon does not follow from its mechanism."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = SigningKey(Ed25519PrivateKey.generate())
    chain, prev = [], "0" * 64
    from shared.ledger import entry_hash

    for i, e in enumerate(ledger_entries[:3]):
        body = {k: v for k, v in e.items() if k != "signature"}
        body |= {"node_key_id": key.key_id, "public_key": key.public_b64, "prev_hash": prev, "seq": i,
                 "epsilon": e["epsilon"] * 0.5}
        signed = key.sign(body)
        chain.append(signed)
        prev = entry_hash(signed)
    assert verify_chain(chain) == []
    code, out = audit_cli(tmp_path, chain)
    assert code == 1 and "differs from recomputed" in out


def test_budget_violation_is_reported(tmp_path, ledger_entries):
    code, out = audit_cli(tmp_path, ledger_entries, "--budget", "1.0")
    assert code == 1 and "exceeds the budget" in out


def test_unknown_node_keys_are_flagged(tmp_path, ledger_entries):
    keys = tmp_path / "keys.txt"
    keys.write_text(ledger_entries[0]["node_key_id"] + "\n")
    code, out = audit_cli(tmp_path, ledger_entries, "--node-keys", str(keys))
    assert code == 1 and "not a registered node key" in out


def test_malformed_ledger_is_a_clear_error(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"a": 1}\nnot json\n')
    with pytest.raises(Exception, match="line 2: not JSON"):
        read_jsonl(path)
    assert json.loads('{"a": 1}') == {"a": 1}
