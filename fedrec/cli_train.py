"""`fedrec train`: the centralized reference trainer."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

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
        table = Table(title=f"{cfg.model} on {cfg.data_path} (best epoch {result.best_epoch}/{result.epochs_run})")
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
            overrides = {**saved, **overrides, "resume-from": str(resume.resolve())}
            out = resume
        else:
            preset = preset or "synthetic"
        out = out or Path("runs") / f"{preset}-{time.strftime('%Y%m%d-%H%M%S')}"
        result = run_simulation(preset, overrides, out, show_progress=not quiet)
        _print_summary(result.summary, f"federated run {out}")


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
