"""`fedrec audit LEDGER`: verify a privacy ledger against the run manifest and report, for privacy officers."""

from __future__ import annotations

import io
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from shared.atomic import atomic_write_bytes, atomic_write_text
from shared.audit import AuditReport, NodeAudit, audit_run
from shared.errors import FedrecError
from shared.ledger import read_jsonl
from shared.manifest import NAME as MANIFEST

console = Console()
WIDE = 110  # below this many columns (or when not a terminal) the report is printed one node per line


def register(app: typer.Typer) -> None:
    @app.command()
    def audit(
        ledger: Annotated[Path, typer.Argument(help="A federation or node ledger (JSONL).")],
        budget: Annotated[float | None, typer.Option(help="Maximum epsilon any node may spend.")] = None,
        report: Annotated[Path | None, typer.Option(help="Report base path (writes .md and .png); "
                                                         "default: beside the ledger.")] = None,
        tolerance: Annotated[float, typer.Option(help="Allowed relative epsilon under-statement.")] = 0.01,
        node_keys: Annotated[Path | None, typer.Option(help="File of registered node key ids, one per line.")] = None,
        manifest: Annotated[Path | None, typer.Option(help=f"The coordinator's run manifest (default: {MANIFEST} "
                                                           "beside the ledger).")] = None,
        no_manifest: Annotated[bool, typer.Option("--no-manifest", help="Check chains only: omitted or truncated "
                                                  "entries then go undetected.")] = False,
        coordinator_key: Annotated[str | None, typer.Option(help="Expected coordinator key id of the manifest.")]
        = None,
    ) -> None:
        """Verify signatures, chains and the manifest, recompute every epsilon independently, check budgets."""
        entries = read_jsonl(ledger)
        known = None
        if node_keys is not None:
            known = {line.strip() for line in node_keys.read_text().splitlines() if line.strip()}
        rows = None
        if not no_manifest:
            path = manifest or ledger.parent / MANIFEST
            if not path.exists():
                raise FedrecError(f"{path}: no coordinator manifest; without it an omitted or truncated ledger "
                                  "entry cannot be detected (give --manifest PATH, or --no-manifest)")
            rows = read_jsonl(path)
        result = audit_run(entries, manifest=rows, budget=budget, tolerance=tolerance, known_keys=known,
                           coordinator_key=coordinator_key)
        base = report or ledger.with_name(ledger.stem + "-audit")
        print_report(result)
        write_markdown(result, base.with_suffix(".md"), ledger, budget)
        plot(result.nodes, base.with_suffix(".png"))
        console.print(f"report: {base.with_suffix('.md')}, {base.with_suffix('.png')}", soft_wrap=True)
        for note in result.notes:
            console.print(f"note: {note}", soft_wrap=True)
        if not result.nodes and not result.problems:
            console.print("[bold red]no ledger entries found[/]")
            sys.exit(1)
        if not result.ok:
            for problem in violations(result):
                console.print(f"[bold red]VIOLATION[/] {problem}", soft_wrap=True)
            sys.exit(1)
        checked = "against the coordinator's manifest" if rows is not None else "(no manifest: chains only)"
        console.print(f"[bold green]OK[/]: {len(result.nodes)} node chain(s) verified {checked}", soft_wrap=True)


def violations(result: AuditReport) -> list[str]:
    """Every violation as one line naming the node (and run)."""
    lines = [f"run: {p}" for p in result.problems]
    for a in result.nodes:
        lines += [f"node {a.node_key_id} (run {a.run_id[:8]}): {p}" for p in a.problems]
    return lines


def _cells(a: NodeAudit) -> dict[str, str]:
    return {
        "run": a.run_id[:8], "node key": a.node_key_id, "unit": f"{a.unit}-level", "rounds": str(len(a.rounds)),
        "steps": str(a.steps), "epsilon": f"{a.final_epsilon:.4f}",
        "recomputed": f"{a.recomputed[-1]:.4f}" if a.recomputed else "-", "budget": f"{a.budget:g}",
        "delta": f"{a.delta:.3g}", "accountant": a.accountant, "noise": a.noise,
        "status": "ok" if a.ok else f"{len(a.problems)} problem(s)",
    }


def print_report(result: AuditReport) -> None:
    """A table on a wide terminal; otherwise one line per node (readable at 80 columns and in logs)."""
    if result.manifest is not None:
        m = result.manifest
        console.print(f"manifest: run {str(m.run_id)[:8]}, coordinator key {m.coordinator_key_id}, "
                      f"{len(m.rounds or [])} round(s), {len(m.entries or ())} entries acknowledged"
                      f"{'' if m.closed else ', not closed'}", soft_wrap=True)
    if console.is_terminal and console.width >= WIDE:
        table = Table(title="privacy ledger audit")
        for col in _cells(result.nodes[0]) if result.nodes else ():
            table.add_column(col, overflow="fold")
        for a in result.nodes:
            cells = _cells(a)
            cells["status"] = "[green]ok[/]" if a.ok else f"[red]{cells['status']}[/]"
            table.add_row(*cells.values())
        console.print(table)
        return
    for a in result.nodes:
        c = _cells(a)
        console.print(f"node {c['node key']} run {c['run']}: {c['status']}; epsilon {c['epsilon']} (recomputed "
                      f"{c['recomputed']}) of budget {c['budget']}, {c['unit']}, delta {c['delta']}, "
                      f"{c['accountant']}, {c['noise']} noise, {c['rounds']} rounds, {c['steps']} steps",
                      soft_wrap=True, highlight=False)


def write_markdown(result: AuditReport, path: Path, ledger: Path, budget: float | None) -> None:
    m = result.manifest
    lines = [f"# Privacy audit of `{ledger.name}`", "",
             f"Budget checked: {budget if budget is not None else 'as recorded by each node'}. "
             "Epsilon recomputed with Google dp-accounting (RDP; PLD for prv entries), independent of Opacus.", "",
             (f"Manifest: run `{m.run_id}`, coordinator key `{m.coordinator_key_id}`, {len(m.rounds or [])} "
              f"round(s), {len(m.entries or ())} ledger entries acknowledged, "
              f"{'closed' if m.closed else 'not closed (run unfinished?)'}." if m is not None else
              "Manifest: not checked (`--no-manifest`): omitted or truncated entries are not detected."), "",
             "| run | node key | unit | rounds | steps | epsilon (recorded) | epsilon (recomputed) | budget | delta | "
             "accountant | noise | status |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for a in result.nodes:
        c = _cells(a)
        c["status"] = "ok" if a.ok else "VIOLATION"
        lines.append("| " + " | ".join(c.values()) + " |")
    lines += ["", "## Violations", ""] + ([f"- {v}" for v in violations(result)] or ["none"])
    if result.notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in result.notes]
    atomic_write_text(path, "\n".join(lines) + "\n")


def plot(audits: list[NodeAudit], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for a in audits:
        ax.plot(a.rounds, a.recorded, marker="o", label=f"{a.node_key_id[:8]} ({a.unit})")
        if a.budget != float("inf"):
            ax.axhline(a.budget, color="grey", linestyle=":", linewidth=1)
    ax.set(xlabel="round", ylabel="epsilon spent (cumulative)", title="privacy spent per round per node")
    if len(audits) <= 12:
        ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
