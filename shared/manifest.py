"""The coordinator's run manifest: which node keys trained in each round, and which ledger entries it got.

One JSON object per line in ``manifest.jsonl`` of the run directory, signed with the
coordinator's Ed25519 key and hash-chained like a node ledger (``seq``, ``prev_hash``). A
record per training round lists every node ledger entry the coordinator received that
round (``node_key_id``, the entry's ``round``, ``seq`` and hash) and the node keys that
trained in the round itself (a round redone after a coordinator restart is recorded again);
``kind`` is ``"round"``, ``"reconcile"`` (entries found in the
federation ledger at a resume that no record acknowledged yet: a crash between the two
writes) or ``"close"`` (the run's end: rounds run). Because the coordinator signs what it
received, an auditor can tell an omitted, truncated or spliced node chain from a complete one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from shared.ledger import GENESIS, entry_hash, signature_ok

NAME = "manifest.jsonl"
VERSION = 1
FIELDS = ("version", "kind", "run_id", "round", "seq", "node_key_id", "public_key", "trained", "entries",
          "prev_hash", "signature")
KINDS = ("round", "reconcile", "close")


@dataclass(frozen=True)
class Acknowledged:
    """One node ledger entry as the coordinator recorded it."""

    node_key_id: str
    round: int
    seq: int
    hash: str


def acknowledged(entry: dict[str, Any]) -> Acknowledged:
    """How a manifest names a node ledger entry."""
    return Acknowledged(str(entry.get("node_key_id")), int(entry.get("round", -1)), int(entry.get("seq", -1)),
                        entry_hash(entry))


@dataclass
class ManifestCheck:
    """A verified manifest: its run, coordinator key, acknowledged entries and problems."""

    run_id: str | None = None
    coordinator_key_id: str | None = None
    rounds: list[int] | None = None
    closed: bool = False
    entries: set[Acknowledged] | None = None
    trained: dict[int, set[str]] | None = None
    problems: list[str] | None = None


def check_manifest(rows: list[dict[str, Any]], *, coordinator_key: str | None = None) -> ManifestCheck:
    """Verify signatures, chain, single run and single key; collect what the coordinator acknowledged."""
    out = ManifestCheck(rounds=[], entries=set(), trained={}, problems=[])
    prev = GENESIS
    for i, row in enumerate(rows):
        where = f"manifest record {i} (round {row.get('round', '?')})"
        missing = [f for f in FIELDS if f not in row]
        if missing or row.get("kind") not in KINDS:
            out.problems.append(f"{where}: missing fields {missing} or unknown kind {row.get('kind')!r}")
            continue
        if not signature_ok(row):
            out.problems.append(f"{where}: coordinator signature does not verify (edited or forged)")
        if row["seq"] != i or row["prev_hash"] != prev:
            out.problems.append(f"{where}: manifest chain broken (a record was removed, reordered or edited)")
        prev = entry_hash(row)
        out.run_id = out.run_id or str(row["run_id"])
        out.coordinator_key_id = out.coordinator_key_id or str(row["node_key_id"])
        if row["run_id"] != out.run_id or row["node_key_id"] != out.coordinator_key_id:
            out.problems.append(f"{where}: from another run or another coordinator key")
            continue
        try:
            acks = {Acknowledged(str(a["node_key_id"]), int(a["round"]), int(a["seq"]), str(a["hash"]))
                    for a in row["entries"]}
            trained = {str(k) for k in row["trained"]}
            rnd = int(row["round"])
        except (KeyError, TypeError, ValueError):
            out.problems.append(f"{where}: malformed entries or trained list")
            continue
        out.entries |= acks
        if row["kind"] == "round":
            last = out.rounds[-1] if out.rounds else 0
            if rnd not in (last, last + 1):  # == last: the round was redone after a coordinator restart
                out.problems.append(f"{where}: round {rnd} follows round {last} (rounds missing from the manifest)")
            if rnd != last:
                out.rounds.append(rnd)
            out.trained.setdefault(rnd, set()).update(trained)
        elif row["kind"] == "close":
            out.closed = True
    if coordinator_key is not None and out.coordinator_key_id not in (None, coordinator_key):
        out.problems.append(f"manifest signed by coordinator key {out.coordinator_key_id}, expected {coordinator_key}")
    return out
