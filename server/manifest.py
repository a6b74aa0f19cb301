"""The coordinator's side of the run manifest (:mod:`shared.manifest`): sign what each round received.

After the federation ledger is saved for a round, :meth:`RunManifest.record_round` appends one
signed record naming the node ledger entries received that round; :meth:`reconcile` (at a
resume) acknowledges entries the federation ledger holds that no record names yet (a crash
between the two writes); :meth:`close` marks the end of the run. Appends are durable (fsync);
the coordinator key is ``coordinator.key`` (0600) in the run directory.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from shared.atomic import append_line_durable
from shared.ledger import GENESIS, SigningKey, entry_hash, read_jsonl
from shared.manifest import NAME, VERSION, acknowledged

KEY_NAME = "coordinator.key"


class RunManifest:
    """Append-only, signed, hash-chained manifest of one run."""

    def __init__(self, run_dir: str | Path, run_key: str) -> None:
        self.path = Path(run_dir) / NAME
        self.run_key = run_key
        self.key = SigningKey.load_or_create(Path(run_dir) / KEY_NAME)
        self.rows = read_jsonl(self.path) if self.path.exists() else []

    def acknowledged(self) -> set[str]:
        """Hashes of every node ledger entry a record names."""
        return {a["hash"] for row in self.rows for a in row.get("entries", [])}

    def _append(self, kind: str, server_round: int, entries: list[dict[str, Any]], trained: list[str]) -> None:
        body = {
            "version": VERSION, "kind": kind, "run_id": self.run_key, "round": server_round, "seq": len(self.rows),
            "node_key_id": self.key.key_id, "public_key": self.key.public_b64, "trained": sorted(set(trained)),
            "entries": [asdict(acknowledged(e)) for e in entries],
            "prev_hash": entry_hash(self.rows[-1]) if self.rows else GENESIS,
        }
        row = self.key.sign(body)
        append_line_durable(self.path, json.dumps(row, sort_keys=True), mode=0o644)
        self.rows.append(row)

    def record_round(self, server_round: int, new_entries: list[dict[str, Any]]) -> None:
        """The entries received in ``server_round``; node keys with an entry of this round trained in it."""
        trained = [str(e["node_key_id"]) for e in new_entries if e.get("round") == server_round]
        self._append("round", server_round, new_entries, trained)

    def reconcile(self, server_round: int, ledger_entries: list[dict[str, Any]]) -> None:
        """Acknowledge entries of the federation ledger that no record names yet (after a crash)."""
        known = self.acknowledged()
        missing = [e for e in ledger_entries if entry_hash(e) not in known]
        if missing:
            self._append("reconcile", server_round, missing, [])

    def close(self, rounds_run: int) -> None:
        """The run ended after ``rounds_run`` rounds."""
        if not self.rows or self.rows[-1]["kind"] != "close":
            self._append("close", rounds_run, [], [])

