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
from shared.models.factory import neumf_from_pretrained
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
    if cfg.model.task == "explicit":
        return evaluate_rating(model, data, role, value_range).means()
    return evaluate_ranking(model, data, role, k=cfg.eval.top_k, full_rank=full_rank).means(cfg.eval.top_k)


def _score(cfg: RunConfig, metrics: dict[str, float]) -> float:
    """Higher is better: HR@K (implicit) or -RMSE (explicit)."""
    return -metrics["rmse"] if cfg.model.task == "explicit" else metrics[f"hr{cfg.eval.top_k}"]


def train_centralized(
    cfg: RunConfig, out: str | Path | None = None, *, data: InteractionData | None = None,
    value_range: tuple[float, float] | None = None, show_progress: bool = True,
) -> CentralizedResult:
    """Train ``cfg.model.name`` on all users for up to ``cfg.train.epochs`` epochs with early stopping.

    With ``train.pretrain-epochs`` > 0 and ``model.name = "neumf"``, first trains a GMF and a
    ReLU MLP (each with its own validation-based early stopping) and starts NeuMF
    from them (NCF's pretraining). Writes a run directory to ``out`` when given
    (config, metrics.jsonl, model.pt, summary.json, learning_curves.png).
    """
    tables = None
    if data is None or cfg.model.item_init != "random":
        tables = load_tables(cfg.data.path, seed=cfg.seed, synthetic_users=cfg.data.synthetic_users,
                             synthetic_items=cfg.data.synthetic_items)
    if data is None:
        data = InteractionData.from_tables(tables)
        value_range = tuple(tables.manifest["value_range"])
    value_range = value_range or (1.0, 5.0)
    run = RunDirectory.create(out, cfg, kind="centralized") if out is not None else None
    features = genre_matrix(tables) if cfg.model.item_init != "random" else None  # genres, or auto when there are
    if cfg.model.item_init == "genres" and features is None:
        raise ConfigError("item-init", "the dataset has no public item genres (prepare it with --item-metadata)")
    fit = _Fitter(data, value_range, run, show_progress, features)
    pretrained_seconds = 0.0
    if cfg.model.name == "neumf" and cfg.train.pretrain_epochs:
        stage = {"train.epochs": cfg.train.pretrain_epochs}
        gmf, gmf_fit = fit(cfg.with_overrides({**stage, "model.name": "gmf"}), "pretrain-gmf")
        mlp, mlp_fit = fit(cfg.with_overrides({**stage, "model.name": "mlp", "model.mlp-activation": "relu"}),
                           "pretrain-mlp")
        pretrained_seconds = gmf_fit.train_seconds + mlp_fit.train_seconds
        model, outcome = fit(cfg, "neumf", start=(gmf, mlp))
    else:
        model, outcome = fit(cfg, cfg.model.name)
    test = evaluate(model, data, cfg, splits.TEST, value_range, full_rank=True)
    outcome = CentralizedResult(outcome.best_epoch, outcome.val, test, outcome.train_seconds + pretrained_seconds,
                                outcome.epochs_run)
    if run:
        run.save_model("model.pt", {"config": cfg.to_flower_config(), "state": model.state_dict(),
                                    "user_ids": list(data.user_ids), "epoch": outcome.best_epoch})
        run.write_json("summary.json", {"best_epoch": outcome.best_epoch, "epochs_run": outcome.epochs_run,
                                        "val": outcome.val, "test": test, "train_seconds": outcome.train_seconds})
        records = [r for r in run.records() if r.get("stage", cfg.model.name) == cfg.model.name]
        learning_curves(records, run.path / "learning_curves.png", x="epoch",
                        title=f"centralized {cfg.model.name} ({cfg.data.path})")
    return outcome


class _Fitter:
    """Epoch loop with validation-based model selection (shared by pretraining stages)."""

    def __init__(self, data, value_range, run, show_progress, features) -> None:
        self.data, self.value_range, self.run = data, value_range, run
        self.show_progress, self.features = show_progress, features

    def __call__(self, cfg: RunConfig, stage: str, start=None) -> tuple[torch.nn.Module, CentralizedResult]:
        data = self.data
        with torch_seed(cfg.seed, "model", stage):
            model = build_model(cfg, data.n_users, data.n_items)
        if self.features is not None:
            init_items_from_metadata(model, self.features, seed=cfg.seed)
        if start is not None:
            neumf_from_pretrained(model, *start)
        settings = TrainSettings.from_config(cfg, self.value_range)
        optimizer = make_optimizer(model, settings)
        best: tuple[float, int, dict[str, Any], dict[str, float]] | None = None
        stale, train_seconds, epoch = 0, 0.0, 0
        with progress_bar(self.show_progress) as bar:
            task = bar.add_task(f"centralized {stage}", total=cfg.train.epochs, status="")
            for epoch in range(1, cfg.train.epochs + 1):
                result = train_epochs(model, data, settings, epochs=1, optimizer=optimizer,
                                      rng=numpy_rng(cfg.seed, "central", stage, epoch))
                train_seconds += result.seconds
                record: dict[str, Any] = {"stage": stage, "epoch": epoch, "train_loss": result.loss,
                                          "seconds": result.seconds}
                if epoch % cfg.eval.every == 0 or epoch == cfg.train.epochs:
                    t0 = time.perf_counter()
                    val = evaluate(model, data, cfg, splits.VAL, self.value_range, full_rank=cfg.eval.full_rank)
                    record |= {"val": val, "eval_seconds": time.perf_counter() - t0}
                    if best is None or _score(cfg, val) > best[0]:
                        best = (_score(cfg, val), epoch, copy.deepcopy(model.state_dict()), val)
                        stale = 0
                    else:
                        stale += 1
                if self.run:
                    self.run.log(record)
                bar.update(task, advance=1, status=_status(record))
                if cfg.eval.patience and stale >= cfg.eval.patience:
                    break
        assert best is not None
        model.load_state_dict(best[2])
        return model, CentralizedResult(best[1], best[3], {}, train_seconds, epoch)


def _status(record: dict[str, Any]) -> str:
    val = record.get("val") or {}
    shown = [f"loss {record['train_loss']:.4f}"] + [f"{k} {v:.3f}" for k, v in val.items() if k in ("hr10", "rmse")]
    return "  ".join(shown)
