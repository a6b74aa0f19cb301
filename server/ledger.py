"""The run's federation ledger: every node's signed privacy chain, mirrored by the coordinator.

Each DP training reply carries the node's whole chain for the run (a few hundred
bytes per round). The coordinator keeps, per node key, the longest chain that
extends what it already holds, and rewrites ``federation_ledger.jsonl``
atomically after each round. Because the node's chain is the source of truth, a
crash or a lost reply never loses or duplicates an entry: the next reply brings
the full chain again. An auditor verifies the file with ``fedrec audit``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from shared.ledger import entry_hash, read_jsonl, write_jsonl

log = logging.getLogger("flwr")
NAME = "federation_ledger.jsonl"


class FederationLedger:
    """Per-node chains of one run."""

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / NAME
        self.chains: dict[str, list[dict[str, Any]]] = {}
        if self.path.exists():
            for entry in read_jsonl(self.path):
                self.chains.setdefault(entry["node_key_id"], []).append(entry)

    def update(self, node: int, lines: list[str]) -> list[dict[str, Any]]:
        """Adopt a node's chain if it extends the one held (else keep the old one and log why).

        Returns the entries that are new (what the run manifest acknowledges for this round).
        """
        try:
            chain = [json.loads(line) for line in lines]
        except (json.JSONDecodeError, TypeError):
            log.warning("node %d sent an unreadable ledger; ignored", node)
            return []
        if not chain or not all(isinstance(e, dict) for e in chain):
            return []
        key = chain[0].get("node_key_id")
        if not isinstance(key, str) or any(e.get("node_key_id") != key for e in chain):
            log.warning("node %d sent a ledger mixing node keys; ignored", node)
            return []
        held = self.chains.get(key, [])
        if len(chain) < len(held) or [entry_hash(e) for e in chain[: len(held)]] != [entry_hash(e) for e in held]:
            log.warning("node %d sent a ledger that does not extend the one held (%d entries); kept the held one",
                        node, len(held))
            return []
        self.chains[key] = chain
        return chain[len(held):]

    def entries(self) -> list[dict[str, Any]]:
        return [e for key in sorted(self.chains) for e in self.chains[key]]

    def save(self) -> None:
        if self.chains:
            write_jsonl(self.path, self.entries())
