"""Audit a privacy ledger: signatures, hash chains, independent epsilon, budgets.

For every (run, node) chain in a ledger file the auditor checks that

1. every entry's Ed25519 signature verifies and the chain is intact (no entry
   removed, reordered or edited), and, if given, that the node key is a known one;
2. each recorded epsilon equals the epsilon recomputed from the mechanism
   parameters of all entries so far with an *independent* accountant
   (Google's dp-accounting; RDP, or PLD for ``prv`` entries) within ``tolerance``;
3. the node's final epsilon is within its budget (``--budget`` or the budget the
   node recorded, whichever is smaller) and the recorded epsilons never exceed it.

The epsilon unit (user or interaction level), delta and accountant come from the
entries themselves and are reported with every figure.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from shared.accounting import independent_epsilon
from shared.ledger import verify_chain


@dataclass
class NodeAudit:
    """The audit of one node's chain in one run."""

    run_id: str
    node_key_id: str
    unit: str
    delta: float
    accountant: str
    rounds: list[int] = field(default_factory=list)
    recorded: list[float] = field(default_factory=list)
    recomputed: list[float] = field(default_factory=list)
    steps: int = 0
    budget: float = float("inf")
    problems: list[str] = field(default_factory=list)

    @property
    def final_epsilon(self) -> float:
        return self.recorded[-1] if self.recorded else 0.0

    @property
    def ok(self) -> bool:
        return not self.problems


def _number(value: Any) -> float:
    """A finite float from a ledger field, or NaN for anything malformed (bool, str, None, ...)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return float("nan")
    return float(value)


def group_chains(entries: list[dict[str, Any]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """Entries per (run id, node key id), in file order."""
    chains: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for e in entries:
        chains.setdefault((str(e.get("run_id")), str(e.get("node_key_id"))), []).append(e)
    return chains


def audit_entries(
    entries: list[dict[str, Any]], *, budget: float | None = None, tolerance: float = 0.01,
    known_keys: set[str] | None = None,
) -> list[NodeAudit]:
    """Audit every chain; a NodeAudit with a non-empty ``problems`` list is a violation."""
    audits = []
    for (run_id, key_id), chain in sorted(group_chains(entries).items()):
        first = chain[0]
        delta = _number(first.get("delta"))
        a = NodeAudit(run_id, key_id, str(first.get("unit")), delta, str(first.get("accountant")))
        a.problems += verify_chain(chain)
        if known_keys is not None and key_id not in known_keys:
            a.problems.append(f"node key {key_id} is not a registered node key")
        if not 0 < delta < 1 or a.accountant not in ("rdp", "prv"):
            a.problems.append(f"delta {first.get('delta')!r} or accountant {first.get('accountant')!r} is invalid")
            audits.append(a)
            continue
        recorded_budgets = {_number(e.get("epsilon_budget", float("inf"))) for e in chain}
        if any(b != b for b in recorded_budgets):  # NaN: malformed
            a.problems.append("a recorded budget is malformed")
            recorded_budgets = {b for b in recorded_budgets if b == b} or {float("inf")}
        a.budget = min([*recorded_budgets, budget if budget is not None else float("inf")])
        if len(recorded_budgets) > 1:
            a.problems.append(f"the budget changed within the run: {sorted(recorded_budgets)}")
        history = []
        for e in chain:
            try:
                segment = (_number(e["noise_multiplier"]), _number(e["sample_rate"]), int(e["steps"]))
                recorded = _number(e["epsilon"])
                round_no = int(e.get("round", -1))
                if any(x != x for x in (*segment, recorded)) or not 0 < segment[1] <= 1 or segment[2] < 0:
                    raise ValueError("out of range")
                again = independent_epsilon([*history, segment], a.delta, a.accountant)
            except (KeyError, TypeError, ValueError, ArithmeticError):  # malformed fields; dp-accounting: ValueError
                a.problems.append(f"entry seq {e.get('seq')}: mechanism parameters missing or malformed")
                continue
            for name in ("unit", "delta", "accountant", "clip_norm"):
                if e.get(name) != first.get(name):
                    a.problems.append(f"entry seq {e.get('seq')}: {name} changed within the run")
            history.append(segment)
            a.rounds.append(round_no)
            a.recorded.append(recorded)
            a.recomputed.append(again)
            a.steps += segment[2]
            if abs(again - recorded) > tolerance * max(abs(again), 1e-12):
                a.problems.append(f"round {e.get('round')}: recorded epsilon {recorded:.4f} differs from "
                                  f"recomputed {again:.4f} by more than {tolerance:.0%}")
            if recorded > a.budget * (1 + 1e-9) or again > a.budget * (1 + tolerance):
                a.problems.append(f"round {e.get('round')}: epsilon {max(recorded, again):.4f} exceeds the "
                                  f"budget {a.budget:g}")
        audits.append(a)
    return audits
