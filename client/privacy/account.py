"""A node's privacy account for one run: plan, spent history, guard, signed ledger.

The plan (noise multiplier etc.) is fixed at the node's first round and
persisted, so every later round — also after a restart — runs the same
mechanism and checks against the same budget. Each spend is recorded before the
update leaves the node: accountant history to ``privacy.json`` (atomic) and a
signed, hash-chained entry to the node's ``ledger.jsonl`` (fsynced append).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from client.privacy.plan import DPPlan, plan_for, refusal, replan
from client.state import NodeStateStore
from shared.accounting import Segment, epsilon
from shared.config import RunConfig
from shared.interactions import InteractionData
from shared.ledger import NodeLedger, SigningKey
from shared.row_selection import split_multiplier


class PrivacyAccount:
    """Plan, history and ledger of one node in one run."""

    def __init__(self, store: NodeStateStore, cfg: RunConfig, data: InteractionData,
                 signing_key: str | Path | None = None) -> None:
        self.store = store
        doc = store.load_privacy()
        self.plan = DPPlan(**doc["plan"]) if doc else plan_for(cfg, data)
        self.history: list[Segment] = [tuple(s) for s in doc["history"]] if doc else []  # type: ignore[misc]
        self.key = SigningKey.load_or_create(signing_key or store.root / "signing.key")
        self.ledger = NodeLedger(store.root / "ledger.jsonl")

    def adopt_rounds(self, rounds: int, most: int) -> str | None:
        """Train ``rounds`` rounds (the coordinator's recipe, at most ``most``): replan before the first training
        release; a refusal reason if training already started with another number, else None."""
        if rounds == self.plan.planned_rounds:
            return None
        if not 0 <= rounds <= most:
            return f"the coordinator asks for {rounds} rounds; the run config allows 0..{most}"
        if len(self.history) > (1 if self.plan.frequency_multiplier > 0 else 0):
            return f"planned rounds changed from {self.plan.planned_rounds} to {rounds} after training started"
        self.plan = replan(self.plan, self.history, rounds)
        self.store.save_privacy({"plan": self.plan.as_dict(), "history": [list(s) for s in self.history]})
        return None

    def refusal(self, segment: Segment | None = None) -> str | None:
        """Why this node must not make its next release (prospective check), or None."""
        return refusal(self.history, self.plan, segment)

    def spent(self) -> float:
        return epsilon(self.history, self.plan.delta, self.plan.accountant)

    def record(self, server_round: int, steps: int, *, segment: Segment | None = None, mechanism: str | None = None,
               sensitivity: float | None = None) -> dict[str, Any]:
        """Add one release's spend: history, then a signed ledger entry. Returns the entry.

        Defaults: ``steps`` steps of the plan's training mechanism with its clip norm as sensitivity.
        """
        p = self.plan
        segment = segment or p.segment(steps)
        self.history.append(segment)
        self.store.save_privacy({"plan": p.as_dict(), "history": [list(s) for s in self.history]})
        entry = {
            "run_id": self.store.run_key, "round": server_round, "unit": p.unit,
            "noise_multiplier": segment[0], "sample_rate": segment[1], "steps": segment[2],
            "clip_norm": p.clip_norm if sensitivity is None else sensitivity, "delta": p.delta,
            "accountant": p.accountant, "epsilon": self.spent(), "epsilon_budget": p.target_epsilon,
            "mechanism": mechanism or p.mechanism, "noise": p.noise, "noise_share": p.share,
        }
        if mechanism == "gradient" and p.row_threshold > 0:  # the release's two parts (shared.row_selection)
            z1, z2 = split_multiplier(segment[0], p.row_selection_share)
            entry |= {"row_threshold": p.row_threshold, "selection_multiplier": z1, "gradient_multiplier": z2}
        return self.ledger.append(self.key, entry)

    def chain(self) -> list[dict[str, Any]]:
        """This node's ledger entries of this run, in order."""
        return self.ledger.entries(self.store.run_key)
