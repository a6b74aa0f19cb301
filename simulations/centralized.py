"""The centralized reference: one machine, all users, same model and metrics.

This is the quality limit the federation is compared with. Model selection is
honest: early stopping and the kept model are chosen on *validation* HR@10
(implicit) or RMSE (explicit); the test split is evaluated once, at the end,
with the selected model.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from client.trainer import TrainSettings, make_optimizer, train_epochs
from shared import splits
from shared.config import RunConfig
from shared.datasets import load_tables
from shared.errors import ConfigError
from shared.evaluation import evaluate_ranking, evaluate_rating
from shared.interactions import InteractionData
from shared.models import build_model, init_items_from_metadata
from shared.plots import learning_curves
from shared.prepared import genre_matrix
from shared.progress import progress_bar
from shared.rundir import RunDirectory
from shared.seeding import numpy_rng, torch_seed


@dataclass(frozen=True)
class CentralizedResult:
    """Best epoch, its validation figures and the test figures of the selected model."""

    best_epoch: int
    val: dict[str, float]
    test: dict[str, float]
    train_seconds: float
    epochs_run: int


def evaluate(model: torch.nn.Module, data: InteractionData, cfg: RunConfig, role: str, value_range,
             *, full_rank: bool) -> dict[str, float]:
    """The task's metrics for one role."""
    if cfg.task == "explicit":
        return evaluate_rating(model, data, role, value_range).means()
    return evaluate_ranking(model, data, role, k=cfg.top_k, full_rank=full_rank).means(cfg.top_k)


def _score(cfg: RunConfig, metrics: dict[str, float]) -> float:
    """Higher is better: HR@K (implicit) or -RMSE (explicit)."""
    return -metrics["rmse"] if cfg.task == "explicit" else metrics[f"hr{cfg.top_k}"]


def train_centralized(
    cfg: RunConfig, out: str | Path | None = None, *, data: InteractionData | None = None,
    value_range: tuple[float, float] | None = None, show_progress: bool = True,
) -> CentralizedResult:
    """Train ``cfg.model`` on all users for up to ``cfg.epochs`` epochs with early stopping.

    Writes a run directory to ``out`` when given (config, metrics.jsonl, model.pt,
    summary.json, learning_curves.png).
    """
    tables = None
    if data is None or cfg.item_init == "genres":
        tables = load_tables(cfg.data_path, seed=cfg.seed, synthetic_users=cfg.synthetic_users,
                             synthetic_items=cfg.synthetic_items)
    if data is None:
        data = InteractionData.from_tables(tables)
        value_range = tuple(tables.manifest["value_range"])
    value_range = value_range or (1.0, 5.0)
    run = RunDirectory.create(out, cfg, kind="centralized") if out is not None else None
    with torch_seed(cfg.seed, "model"):
        model = build_model(cfg, data.n_users, data.n_items)
    if cfg.item_init == "genres":
        features = genre_matrix(tables)
        if features is None:
            raise ConfigError("item-init", "the dataset has no public item genres (prepare it with --item-metadata)")
        init_items_from_metadata(model, features, seed=cfg.seed)
    settings = TrainSettings.from_config(cfg, value_range)
    optimizer = make_optimizer(model.parameters(), settings)
    best: tuple[float, int, dict[str, Any], dict[str, float]] | None = None
    stale, train_seconds, epoch = 0, 0.0, 0
    with progress_bar(show_progress) as bar:
        task = bar.add_task(f"centralized {cfg.model}", total=cfg.epochs, status="")
        for epoch in range(1, cfg.epochs + 1):
            result = train_epochs(model, data, settings, epochs=1, rng=numpy_rng(cfg.seed, "central", epoch),
                                  optimizer=optimizer)
            train_seconds += result.seconds
            record: dict[str, Any] = {"epoch": epoch, "train_loss": result.loss, "seconds": result.seconds}
            if epoch % cfg.eval_every == 0 or epoch == cfg.epochs:
                t0 = time.perf_counter()
                val = evaluate(model, data, cfg, splits.VAL, value_range, full_rank=cfg.full_rank)
                record |= {"val": val, "eval_seconds": time.perf_counter() - t0}
                if best is None or _score(cfg, val) > best[0]:
                    best = (_score(cfg, val), epoch, copy.deepcopy(model.state_dict()), val)
                    stale = 0
                else:
                    stale += 1
            if run:
                run.log(record)
            bar.update(task, advance=1, status=_status(record))
            if cfg.patience and stale >= cfg.patience:
                break
    assert best is not None
    model.load_state_dict(best[2])
    test = evaluate(model, data, cfg, splits.TEST, value_range, full_rank=True)
    outcome = CentralizedResult(best[1], best[3], test, train_seconds, epoch)
    if run:
        run.save_model("model.pt", {"config": cfg.to_flower_config(), "state": model.state_dict(),
                                    "user_ids": list(data.user_ids), "epoch": best[1]})
        run.write_json("summary.json", {"best_epoch": best[1], "epochs_run": epoch, "val": best[3], "test": test,
                                        "train_seconds": train_seconds})
        learning_curves(run.records(), run.path / "learning_curves.png", x="epoch",
                        title=f"centralized {cfg.model} ({cfg.data_path})")
    return outcome


def _status(record: dict[str, Any]) -> str:
    val = record.get("val") or {}
    shown = [f"loss {record['train_loss']:.4f}"] + [f"{k} {v:.3f}" for k, v in val.items() if k in ("hr10", "rmse")]
    return "  ".join(shown)
