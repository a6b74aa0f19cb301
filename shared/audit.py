"""Audit a privacy ledger: signatures, hash chains, independent epsilon, budgets.

For every (run, node) chain in a ledger file the auditor checks that

1. every entry's Ed25519 signature verifies and the chain is intact (no entry
   removed, reordered or edited), and, if given, that the node key is a known one;
2. each recorded epsilon equals the epsilon recomputed from the mechanism
   parameters of all entries so far with an *independent* accountant
   (Google's dp-accounting; RDP, or PLD for ``prv`` entries) within ``tolerance`` — for a release with DP row
   selection, from the multiplier its row-count and gradient parts compose to (:mod:`shared.row_selection`);
3. the node's final epsilon is within its budget (``--budget`` or the budget the
   node recorded, whichever is smaller) and the recorded epsilons never exceed it;
4. with the coordinator's run manifest (:mod:`shared.manifest`): every entry the
   coordinator received is in the ledger (no entry missing, no chain truncated, no node
   dropped), every entry in the ledger was received by the coordinator for that run (no
   entry for a round the node did not train, none spliced from another run), and the
   manifest itself is signed, chained and from one coordinator key.

A recorded epsilon *below* the independent one (beyond ``tolerance``) under-reports the
spend and is a violation; one above it is conservative and accepted. The epsilon unit
(user, interaction or node level), delta and accountant come from the entries themselves
and are reported with every figure.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from shared.accounting import independent_epsilon
from shared.ledger import verify_chain
from shared.manifest import ManifestCheck, acknowledged, check_manifest
from shared.row_selection import composed_multiplier


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
    noise: str = "local"  # where the noise was added: local, central or distributed
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


def _release_multiplier(e: dict[str, Any]) -> float:
    """The entry's noise multiplier; with DP row selection, recomputed from its two parts (the recorded one is
    ignored: a node that records a larger multiplier than its parts compose to under-reports its spend)."""
    if "selection_multiplier" not in e and "gradient_multiplier" not in e:
        return _number(e["noise_multiplier"])
    z1, z2 = _number(e["selection_multiplier"]), _number(e["gradient_multiplier"])
    if not (z1 > 0 and z2 > 0 and _number(e.get("row_threshold")) >= 0):
        return float("nan")
    return composed_multiplier(z1, z2)


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
        sensitivity: dict[str, Any] = {}  # per mechanism: its clip norm (sensitivity) must stay fixed
        a.noise = str(first.get("noise", "local"))
        for e in chain:
            try:
                segment = (_release_multiplier(e), _number(e["sample_rate"]), int(e["steps"]))
                recorded = _number(e["epsilon"])
                round_no = int(e.get("round", -1))
                if any(x != x for x in (*segment, recorded)) or not 0 < segment[1] <= 1 or segment[2] < 0:
                    raise ValueError("out of range")
                again = independent_epsilon([*history, segment], a.delta, a.accountant)
            except (KeyError, TypeError, ValueError, ArithmeticError):  # malformed fields; dp-accounting: ValueError
                a.problems.append(f"entry seq {e.get('seq')}: mechanism parameters missing or malformed")
                continue
            for name in ("unit", "delta", "accountant", "noise"):
                if e.get(name) != first.get(name):
                    a.problems.append(f"entry seq {e.get('seq')}: {name} changed within the run")
            mechanism = str(e.get("mechanism", "local-sgd"))
            if sensitivity.setdefault(mechanism, e.get("clip_norm")) != e.get("clip_norm"):
                a.problems.append(f"entry seq {e.get('seq')}: clip_norm of {mechanism} changed within the run")
            history.append(segment)
            a.rounds.append(round_no)
            a.recorded.append(recorded)
            a.recomputed.append(again)
            a.steps += segment[2]
            if recorded < again * (1 - tolerance) - 1e-3:
                a.problems.append(f"round {e.get('round')}: recorded epsilon {recorded:.4f} differs from recomputed "
                                  f"{again:.4f}: below it by more than {tolerance:.0%} (spend under-reported)")
            if recorded > a.budget * (1 + 1e-9) or again > a.budget * (1 + tolerance):
                a.problems.append(f"round {e.get('round')}: epsilon {max(recorded, again):.4f} exceeds the "
                                  f"budget {a.budget:g}")
        audits.append(a)
    return audits


@dataclass
class AuditReport:
    """Every node chain's audit plus the run-level checks against the coordinator's manifest."""

    nodes: list[NodeAudit]
    manifest: ManifestCheck | None = None
    problems: list[str] = field(default_factory=list)  # run level: manifest, dropped nodes, foreign entries
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.nodes or self.manifest) and not self.problems and all(a.ok for a in self.nodes)


def audit_run(
    entries: list[dict[str, Any]], *, manifest: list[dict[str, Any]] | None = None, budget: float | None = None,
    tolerance: float = 0.01, known_keys: set[str] | None = None, coordinator_key: str | None = None,
) -> AuditReport:
    """:func:`audit_entries`, then (if given) cross-check every chain against the run manifest."""
    if manifest is None:
        return AuditReport(audit_entries(entries, budget=budget, tolerance=tolerance, known_keys=known_keys))
    check = check_manifest(manifest, coordinator_key=coordinator_key)
    own = [e for e in entries if str(e.get("run_id")) == check.run_id]
    report = AuditReport(audit_entries(own, budget=budget, tolerance=tolerance, known_keys=known_keys), check,
                         problems=list(check.problems))
    for e in entries:
        if str(e.get("run_id")) != check.run_id:
            report.problems.append(f"node {e.get('node_key_id')}: entry seq {e.get('seq')} (round {e.get('round')}) "
                                   f"belongs to run {str(e.get('run_id'))[:8]}, not this run {str(check.run_id)[:8]} "
                                   f"(spliced from another run)")
    by_node = {a.node_key_id: a for a in report.nodes}
    expected: dict[str, list] = {}
    for ack in check.entries:
        expected.setdefault(ack.node_key_id, []).append(ack)
    for key, acks in sorted(expected.items()):
        held = {acknowledged(e) for e in own if str(e.get("node_key_id")) == key}
        missing = sorted((a for a in acks if a not in held), key=lambda a: a.seq)
        registered = " (a registered node)" if known_keys is not None and key in known_keys else ""
        if key not in by_node:
            report.problems.append(f"node {key}{registered}: dropped from the ledger; the coordinator received "
                                   f"{len(acks)} entries from it (rounds {_rounds(acks)})")
            continue
        seqs = [a.seq for a in held]
        if missing and min(a.seq for a in missing) > max(seqs, default=-1):
            last = max(acks, key=lambda a: a.seq)
            by_node[key].problems.append(f"chain truncated after seq {max(seqs)}: the coordinator received entries "
                                         f"up to seq {last.seq} (round {last.round})")
        else:
            by_node[key].problems += [f"entry seq {a.seq} (round {a.round}) received by the coordinator is missing "
                                      "from the ledger" for a in missing]
    acked = check.entries
    for e in own:
        if acknowledged(e) not in acked:
            by_node[str(e.get("node_key_id"))].problems.append(
                f"entry seq {e.get('seq')} (round {e.get('round')}) is not in the coordinator's manifest: the node "
                "did not train in that round for this coordinator, or the entry was spliced in")
    if known_keys is not None:
        idle = sorted(known_keys - set(expected) - set(by_node))
        if idle:
            report.notes.append(f"{len(idle)} registered node key(s) neither trained nor appear in the ledger: "
                                f"{', '.join(idle)}")
    if not check.closed:
        report.notes.append("the manifest has no closing record: the run is unfinished (or its manifest was cut)")
    return report


def _rounds(acks: list) -> str:
    rounds = sorted({a.round for a in acks})
    return f"{rounds[0]}-{rounds[-1]}" if len(rounds) > 2 else ", ".join(map(str, rounds))
