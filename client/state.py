"""Node state that must outlive a round: local user embeddings and the privacy account.

Two places, kept in step:
- ``context.state`` (Flower keeps it in memory per node and run series);
- the node state directory on disk (``state-dir`` in node_config, or
  ``node-state-dir/<node>`` in simulation, else ``$FEDREC_CACHE_DIR/node-state/<node>``),
  so a restarted SuperNode (or a resumed simulation) finds its users' embeddings
  and its spent budget again. Files are written atomically and keyed by the
  federation's run key, so two runs never mix.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, RecordDict

from shared.atomic import atomic_write_bytes, atomic_write_text
from shared.paths import cache_dir

USER_EMB = "user-emb"
META = "node-meta"
PRIVACY = "privacy"


def users_fingerprint(user_ids: np.ndarray) -> str:
    """A hash of the node's ordered user pseudonyms (row i of the table = user i)."""
    return hashlib.sha256("\n".join(map(str, user_ids)).encode()).hexdigest()


def default_state_dir(node_key: str) -> Path:
    """Where a node keeps its state when no directory is configured: ``$FEDREC_CACHE_DIR/node-state/<node>``."""
    return cache_dir() / "node-state" / node_key


class NodeStateStore:
    """Load/save a node's local state for one run key.

    Layout under the node's state directory ``root``: ``signing.key`` and
    ``ledger.jsonl`` (node-wide, all runs), and per run ``<run-key>/user_emb.pt``
    and ``<run-key>/privacy.json`` (the DP plan and the accountant history).
    """

    def __init__(self, state: RecordDict, directory: str | Path, run_key: str) -> None:
        self.state = state
        self.run_key = run_key
        self.root = Path(directory)
        self.directory = self.root / run_key

    def load_local(self, fingerprint: str) -> OrderedDict[str, torch.Tensor] | None:
        """The stored user embeddings for these users, or None if there are none yet."""
        meta = self.state.get(META)
        if (
            isinstance(meta, ConfigRecord)
            and meta.get("run-key") == self.run_key
            and USER_EMB in self.state
            and meta.get("users") == fingerprint
        ):
            return OrderedDict(self.state[USER_EMB].to_torch_state_dict())
        if (self.directory / "user_emb.pt").exists():
            payload = torch.load(self.directory / "user_emb.pt", map_location="cpu", weights_only=True)
            if payload.get("users") == fingerprint:
                return OrderedDict(payload["state"])
        return None

    def save_local(self, local: dict[str, torch.Tensor], fingerprint: str, server_round: int) -> None:
        """Store the user embeddings in memory and (if configured) atomically on disk."""
        self.state[USER_EMB] = ArrayRecord(OrderedDict((k, v.detach().clone()) for k, v in local.items()))
        self.state[META] = ConfigRecord({"run-key": self.run_key, "users": fingerprint, "round": server_round})
        buf = io.BytesIO()
        torch.save({"users": fingerprint, "round": server_round, "state": dict(local)}, buf)
        self.directory.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.directory / "user_emb.pt", buf.getvalue(), mode=0o600)

    # --- privacy state: the run's DP plan and the accountant history -------------------------
    def load_privacy(self) -> dict[str, Any] | None:
        """``{"plan": {...}, "history": [[z, q, steps], ...]}`` of this run; disk wins over memory.

        Disk is authoritative: a restarted node reads its spent budget back from it.
        """
        path = self.directory / "privacy.json"
        if path.exists():
            return json.loads(path.read_text())
        record = self.state.get(PRIVACY)
        if isinstance(record, ConfigRecord) and record.get("run-key") == self.run_key:
            return json.loads(str(record["json"]))
        return None

    def save_privacy(self, doc: dict[str, Any]) -> None:
        """Persist atomically to disk first, then mirror in ``context.state``."""
        self.directory.mkdir(parents=True, exist_ok=True)
        text = json.dumps(doc, sort_keys=True)
        atomic_write_text(self.directory / "privacy.json", text + "\n", mode=0o600)
        self.state[PRIVACY] = ConfigRecord({"run-key": self.run_key, "json": text})
