"""Node state that must outlive a round: local user embeddings (and, later, privacy state).

Two places, kept in step:
- ``context.state`` (Flower keeps it in memory per node and run series);
- a node state directory on disk, when configured, so a restarted SuperNode (or
  a resumed simulation) finds its users' embeddings again. Files are written
  atomically and keyed by the federation's run key, so two runs never mix.
"""

from __future__ import annotations

import hashlib
import io
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, RecordDict

from shared.atomic import atomic_write_bytes

USER_EMB = "user-emb"
META = "node-meta"


def users_fingerprint(user_ids: np.ndarray) -> str:
    """A hash of the node's ordered user pseudonyms (row i of the table = user i)."""
    return hashlib.sha256("\n".join(map(str, user_ids)).encode()).hexdigest()


class NodeStateStore:
    """Load/save a node's local model part for one run key."""

    def __init__(self, state: RecordDict, directory: str | Path | None, run_key: str) -> None:
        self.state = state
        self.run_key = run_key
        self.directory = Path(directory) / run_key if directory else None

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
        if self.directory is not None and (self.directory / "user_emb.pt").exists():
            payload = torch.load(self.directory / "user_emb.pt", map_location="cpu", weights_only=True)
            if payload.get("users") == fingerprint:
                return OrderedDict(payload["state"])
        return None

    def save_local(self, local: dict[str, torch.Tensor], fingerprint: str, server_round: int) -> None:
        """Store the user embeddings in memory and (if configured) atomically on disk."""
        self.state[USER_EMB] = ArrayRecord(OrderedDict((k, v.detach().clone()) for k, v in local.items()))
        self.state[META] = ConfigRecord({"run-key": self.run_key, "users": fingerprint, "round": server_round})
        if self.directory is not None:
            buf = io.BytesIO()
            torch.save({"users": fingerprint, "round": server_round, "state": dict(local)}, buf)
            self.directory.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(self.directory / "user_emb.pt", buf.getvalue(), mode=0o600)
