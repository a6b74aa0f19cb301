"""`fedrec train`: the centralized reference trainer."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from shared.config import RunConfig, load_toml_config, parse_assignments
from shared.errors import FedrecError

console = Console()

ConfigOpt = Annotated[Path | None, typer.Option("--config", help="TOML file of run-config keys.")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="Override a run-config key: key=value (repeatable).")]


def resolve_config(config: Path | None, assignments: list[str] | None) -> RunConfig:
    """Defaults <- config file <- --set overrides, validated once."""
    values: dict = {}
    if config is not None:
        values.update(load_toml_config(config))
    values.update(parse_assignments(assignments or []))
    return RunConfig.from_mapping(values)


def register(app: typer.Typer) -> None:
    @app.command()
    def train(
        out: Annotated[Path, typer.Option(help="Run directory to write.")] = Path("runs/centralized"),
        config: ConfigOpt = None,
        set_: SetOpt = None,
    ) -> None:
        """Train centrally on one machine: the reference the federation is measured against."""
        from simulations.centralized import train_centralized

        cfg = resolve_config(config, set_)
        result = train_centralized(cfg, out)
        table = Table(title=f"{cfg.model.name} on {cfg.data.path} (best epoch {result.best_epoch}/{result.epochs_run})")
        table.add_column("metric")
        table.add_column("validation", justify="right")
        table.add_column("test", justify="right")
        for key in result.test:
            table.add_row(key, f"{result.val.get(key, float('nan')):.4f}", f"{result.test[key]:.4f}")
        console.print(table)
        console.print(f"run directory: {out}")

    @app.command()
    def simulate(
        preset: Annotated[str | None, typer.Option(help="Preset in simulations/presets (default: synthetic).")] = None,
        set_: SetOpt = None,
        out: Annotated[Path | None, typer.Option(help="Run directory (default runs/<preset>-<time>).")] = None,
        resume: Annotated[
            Path | None, typer.Option(help="Continue an interrupted run from its last checkpoint.")
        ] = None,
        quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
    ) -> None:
        """Federated simulation with `flwr run` on a managed local SuperLink (the main job)."""
        import time

        from shared.config import parse_assignments
        from simulations.driver import simulate as run_simulation

        overrides = parse_assignments(set_ or [])
        if resume is not None:
            if preset is not None:
                raise FedrecError("--resume continues a run with its own config; drop --preset")
            saved = load_toml_config(resume / "run-config.toml")
            overrides = {**saved, **overrides, "federation.resume-from": str(resume.resolve())}
            out = resume
        else:
            preset = preset or "synthetic"
        out = out or Path("runs") / f"{preset}-{time.strftime('%Y%m%d-%H%M%S')}"
        from simulations.driver import resolve_config as resolve_run

        cfg = resolve_run(preset, overrides, out.resolve())
        if cfg.dp.enabled:
            console.print(recipe_line(cfg), soft_wrap=True)
        result = run_simulation(preset, overrides, out, show_progress=not quiet)
        _print_summary(result.summary, f"federated run {out}")
        if cfg.dp.enabled:
            _print_privacy(out)
        lists = _write_lists(out, cfg)
        console.print(f"top-{cfg.eval.top_k} lists per node (pseudonyms; `fedrec data reveal` maps them back): {lists}",
                      soft_wrap=True)


def _print_summary(summary: dict, title: str) -> None:
    table = Table(title=f"{title} (best round {summary.get('best_round')}, {summary.get('rounds_run')} rounds)")
    table.add_column("metric")
    table.add_column("validation", justify="right")
    table.add_column("test", justify="right")
    val, test = summary.get("val") or {}, summary.get("test") or {}
    for key in test:
        if key != "count":
            table.add_row(key, f"{val.get(key, float('nan')):.4f}", f"{test[key]:.4f}")
    console.print(table)


def recipe_line(cfg) -> str:
    """The DP recipe of a run, as one line: mechanism, where the noise goes, budget, unit, accountant, knobs."""
    where = {"local": "every node adds it", "central": "the coordinator adds it (trusted)",
             "distributed": "shares under SecAgg+ (trusted: SecAgg+, honest nodes)"}[cfg.dp.noise]
    knobs = (f"q {cfg.dp.sample_rate:g}, clip {cfg.dp.clip_norm:g}, up to {cfg.federation.rounds} rounds "
             f"(round(rho / 1000), rho = epsilon x q x DP user count; below rho {cfg.dp.floor_below:g}: the floor "
             f"model, no training), "
             f"server momentum SGD lr {cfg.dp.server_lr:g}, {cfg.dp.frequency_share:.0%} of epsilon on DP item "
             f"counts" if cfg.dp.mechanism == "sgd" else
             f"{cfg.federation.rounds} passes (below rho = epsilon x DP user count {cfg.dp.als_floor_below:g}: the "
             f"floor model, no pass), {cfg.dp.max_interactions} items per user, "
             f"{cfg.dp.frequency_share:.0%} of epsilon on DP item counts" if cfg.dp.mechanism == "als" else
             f"q {cfg.dp.sample_rate:g}, clip {cfg.dp.clip_norm:g}, {cfg.federation.rounds} rounds x "
             f"{cfg.train.local_epochs} local epoch(s)")
    if cfg.dp.mechanism == "sgd" and cfg.dp.row_threshold > 0:
        knobs += (f", DP row selection: rows above {cfg.dp.row_threshold:g} count-noise stds, "
                  f"{cfg.dp.row_selection_share:.0%} of each round's privacy on the row counts")
    return (f"DP recipe: {cfg.dp.unit}-level, epsilon {cfg.dp.target_epsilon:g} per node for the whole run, "
            f"delta {cfg.dp.delta or 'min(1e-5, 1/(10n))'}, {cfg.dp.accountant}; mechanism {cfg.dp.mechanism}, noise: "
            f"{where}; {knobs}")


def _print_privacy(run: Path) -> None:
    """Epsilon spent per node (with delta and accountant) from the ledger, and the audit against the manifest."""
    from shared.audit import audit_run
    from shared.ledger import read_jsonl
    from shared.manifest import NAME as MANIFEST

    ledger = run / "federation_ledger.jsonl"
    if not ledger.exists():
        console.print("[bold red]no privacy ledger was written[/]")
        return
    manifest = run / MANIFEST
    report = audit_run(read_jsonl(ledger), manifest=read_jsonl(manifest) if manifest.exists() else None)
    for a in report.nodes:
        console.print(f"node {a.node_key_id}: epsilon {a.final_epsilon:.4f} ({a.unit}-level, delta {a.delta:.3g}, "
                      f"{a.accountant}, {a.noise} noise, {a.steps} steps)", soft_wrap=True, highlight=False)
    verdict = "[bold green]ledger verified[/]" if report.ok else "[bold red]ledger audit FAILED[/]"
    console.print(f"{verdict} against the coordinator's manifest (`fedrec audit {ledger}` for the report)",
                  soft_wrap=True)


def _write_lists(run: Path, cfg) -> Path:
    """Each simulated node's top-K lists, written where its data lives (here: the run's node directories)."""
    import dataclasses

    from client.result_file import write_result
    from client.serving.source import ModelSource
    from simulations.client_app import hand_over_partition

    out = run / "recommendations"
    out.mkdir(exist_ok=True)
    source = ModelSource(run=run, hand_over=hand_over_partition)
    for pid in source.partitions():
        rec = dataclasses.replace(source, partition=pid).load()
        rows = np.arange(rec.n_users)
        write_result(rec.to_columns(rows, rec.recommend(rows, cfg.eval.top_k, exclude_seen=True)),
                     out / f"partition-{pid}.csv")
    return out
