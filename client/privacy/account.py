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

from client.privacy.plan import DPPlan, plan_for, refusal
from client.state import NodeStateStore
from shared.accounting import Segment, epsilon
from shared.config import RunConfig
from shared.interactions import InteractionData
from shared.ledger import NodeLedger, SigningKey


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

    def refusal(self) -> str | None:
        """Why this node must not train another round (prospective check), or None."""
        return refusal(self.history, self.plan)

    def spent(self) -> float:
        return epsilon(self.history, self.plan.delta, self.plan.accountant)

    def record(self, server_round: int, steps: int) -> dict[str, Any]:
        """Add one round's spend: history, then a signed ledger entry. Returns the entry."""
        self.history.append(self.plan.segment(steps))
        self.store.save_privacy({"plan": self.plan.as_dict(), "history": [list(s) for s in self.history]})
        p = self.plan
        return self.ledger.append(self.key, {
            "run_id": self.store.run_key, "round": server_round, "unit": p.unit,
            "noise_multiplier": p.noise_multiplier, "sample_rate": p.sample_rate, "steps": steps,
            "clip_norm": p.clip_norm, "delta": p.delta, "accountant": p.accountant, "epsilon": self.spent(),
            "epsilon_budget": p.target_epsilon,
        })

    def chain(self) -> list[dict[str, Any]]:
        """This node's ledger entries of this run, in order."""
        return self.ledger.entries(self.store.run_key)
