"""Benchmarks of the node's final recommendations (serving latency, diversity, cold users).

Each module is a script: ``python -m simulations.benchmarks.<name> --data-dir ../shared/data --out FILE.json``.
They print a table and write JSON (and PNGs beside it). Models they train are cached under
``$FEDREC_CACHE_DIR/benchmarks/<name>`` (a normal ``fedrec train`` run directory), so a
second run, or another benchmark using the same model, skips training.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from shared.config import RunConfig
from shared.datasets import cache_dir

# The defaults these benchmarks' published figures were measured with, before DP became the default: the
# non-private benchmarks start from them so that their commands keep reproducing their figures.
NONPRIVATE = {"dp.enabled": False, "model.item-bias": False, "model.item-init": "random", "dp.clip-norm": 1.0,
              "dp.sample-rate": 0.1,
              "dp.mechanism": "local-sgd", "dp.noise": "local", "dp.frequency-share": 0.0}

# The ML-1M reference model of these benchmarks: GMF (NCF's MF tower), 32 factors, 4 negatives,
# Adam lr 0.002 with batch 1024, 10 epochs (about 15 s per epoch on one core; benchmarks use one torch thread).
ML1M_GMF = {**NONPRIVATE, "data.path": "movielens:ml-1m", "model.name": "gmf", "model.embedding-dim": 32,
            "train.negatives": 4,
            "train.lr": 0.002, "train.batch-size": 1024, "train.epochs": 10, "eval.patience": 0,
            "eval.full-rank": False, "seed": 42}


def use_data_dir(path: str | Path) -> None:
    """Point MovieLens resolution (``movielens:<name>`` data paths) at ``path``."""
    os.environ["FEDREC_DATA_DIR"] = str(Path(path).expanduser().resolve())


def trained_run(name: str, overrides: dict[str, Any]) -> Path:
    """A centralized run directory for ``overrides``, trained once and cached by ``name``."""
    from simulations.centralized import train_centralized

    cfg = RunConfig.from_mapping(overrides)
    out = cache_dir() / "benchmarks" / name
    done = out / "summary.json"
    stored = json.loads((out / "config.json").read_text())["config"] if done.exists() else None
    if stored is not None and RunConfig.from_mapping(stored, strict=False) == cfg:  # keys added since: defaults
        print(f"using the cached model {out}")
        return out
    if done.exists():
        done.unlink()  # same name, other settings: train again
    print(f"training {cfg.model.name} on {cfg.data.path} for {cfg.train.epochs} epochs -> {out}")
    train_centralized(cfg, out, show_progress=True)
    return out


def benchmark_parser(doc: str | None, *, data_dir: bool = True) -> argparse.ArgumentParser:
    """The arguments every benchmark takes: ``--out FILE.json`` and (reading data) ``--data-dir``."""
    parser = argparse.ArgumentParser(description=(doc or "").split("\n")[0])
    if data_dir:
        parser.add_argument("--data-dir", default="../shared/data", help="where MovieLens lives (never copied)")
    parser.add_argument("--out", required=True, help="JSON file to write (PNGs beside it)")
    return parser


def print_table(rows: list[dict[str, Any]], columns: list[str], title: str) -> None:
    """The benchmark's table on stdout (rich; numbers right-aligned, 4 decimals, tiny ones in 3 significant digits)."""
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return "nan" if math.isnan(v) else f"{v:.3g}" if 0 < abs(v) < 1e-3 else f"{v:.4f}"
        return str(v)

    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD)
    for column in columns:
        table.add_column(column, justify="right", overflow="fold")
    for row in rows:
        table.add_row(*(fmt(row.get(c, "")) for c in columns))
    Console(width=max(160, shutil.get_terminal_size().columns)).print(table)


def write_json(path: str | Path, doc: dict[str, Any]) -> None:
    """Write ``doc`` as indented JSON (parents created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    print(f"wrote {path}")
