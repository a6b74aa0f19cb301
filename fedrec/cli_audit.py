"""`fedrec audit LEDGER`: verify a privacy ledger and report, for privacy officers."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from shared.atomic import atomic_write_text
from shared.audit import NodeAudit, audit_entries
from shared.ledger import read_jsonl

console = Console()


def register(app: typer.Typer) -> None:
    @app.command()
    def audit(
        ledger: Annotated[Path, typer.Argument(help="A federation or node ledger (JSONL).")],
        budget: Annotated[float | None, typer.Option(help="Maximum epsilon any node may spend.")] = None,
        report: Annotated[Path | None, typer.Option(help="Report base path (writes .md and .png); "
                                                         "default: beside the ledger.")] = None,
        tolerance: Annotated[float, typer.Option(help="Allowed relative epsilon disagreement.")] = 0.01,
        node_keys: Annotated[Path | None, typer.Option(help="File of registered node key ids, one per line.")] = None,
    ) -> None:
        """Verify signatures and hash chains, recompute every epsilon independently, check budgets."""
        entries = read_jsonl(ledger)
        known = None
        if node_keys is not None:
            known = {line.strip() for line in node_keys.read_text().splitlines() if line.strip()}
        audits = audit_entries(entries, budget=budget, tolerance=tolerance, known_keys=known)
        base = report or ledger.with_name(ledger.stem + "-audit")
        print_table(audits)
        write_markdown(audits, base.with_suffix(".md"), ledger, budget)
        plot(audits, base.with_suffix(".png"))
        console.print(f"report: {base.with_suffix('.md')}, {base.with_suffix('.png')}")
        bad = [a for a in audits if not a.ok]
        if not audits:
            console.print("[bold red]no ledger entries found[/]")
            sys.exit(1)
        if bad:
            for a in bad:
                for problem in a.problems:
                    console.print(f"[bold red]VIOLATION[/] node {a.node_key_id} (run {a.run_id[:8]}): {problem}",
                                  soft_wrap=True)
            sys.exit(1)
        console.print(f"[bold green]OK[/]: {len(audits)} node chain(s) verified")


def print_table(audits: list[NodeAudit]) -> None:
    table = Table(title="privacy ledger audit")
    for col in ("run", "node key", "unit", "rounds", "steps", "epsilon", "recomputed", "budget", "delta",
                "accountant", "status"):
        table.add_column(col, no_wrap=True)
    for a in audits:
        table.add_row(a.run_id[:8], a.node_key_id, a.unit, str(len(a.rounds)), str(a.steps),
                      f"{a.final_epsilon:.4f}", f"{a.recomputed[-1]:.4f}" if a.recomputed else "-",
                      f"{a.budget:g}", f"{a.delta:.3g}", a.accountant,
                      "[green]ok[/]" if a.ok else f"[red]{len(a.problems)} problem(s)[/]")
    console.print(table)


def write_markdown(audits: list[NodeAudit], path: Path, ledger: Path, budget: float | None) -> None:
    lines = [f"# Privacy audit of `{ledger.name}`", "",
             f"Budget checked: {budget if budget is not None else 'as recorded by each node'}. "
             "Epsilon recomputed with Google dp-accounting (RDP; PLD for prv entries), independent of Opacus.", "",
             "| run | node key | unit | rounds | steps | epsilon (recorded) | epsilon (recomputed) | budget | delta | "
             "accountant | status |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for a in audits:
        lines.append(f"| {a.run_id[:8]} | {a.node_key_id} | {a.unit}-level | {len(a.rounds)} | {a.steps} | "
                     f"{a.final_epsilon:.4f} | {a.recomputed[-1] if a.recomputed else float('nan'):.4f} | "
                     f"{a.budget:g} | {a.delta:.3g} | {a.accountant} | {'ok' if a.ok else 'VIOLATION'} |")
    problems = [(a, p) for a in audits for p in a.problems]
    lines += ["", "## Violations", ""] + ([f"- node {a.node_key_id}: {p}" for a, p in problems] or ["none"])
    atomic_write_text(path, "\n".join(lines) + "\n")


def plot(audits: list[NodeAudit], path: Path) -> None:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from shared.atomic import atomic_write_bytes

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
