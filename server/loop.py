"""The coordinator's round loop: train, validate replies, aggregate, checkpoint, evaluate, stop early.

Under DP the released model is the latest round's: validation on the nodes' private data is
reported, but it neither selects a round nor stops the run early (that would be an
unaccounted use of private data).

It drives a Flower strategy through its public contract (``configure_train``,
``aggregate_train``, ``configure_evaluate``, ``aggregate_evaluate``) instead of
``Strategy.start``, because ``start`` has no hooks for resuming at round k+1,
evaluating every N rounds, early stopping or per-round checkpoints.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord
from flwr.serverapp import Grid

from server import checkpoint
from server.central_dp import CentralDP
from server.ledger import FederationLedger
from server.manifest import RunManifest
from server.metrics import ROLES, role_means, selection_score
from server.report import write_plots
from server.strategies import build_strategy, restore_strategy_state, strategy_state
from shared.catalog import ItemCatalog
from shared.config import RunConfig
from shared.datasets import load_tables
from shared.errors import ConfigError
from shared.models import build_model, global_state, init_items_from_metadata
from shared.prepared import genre_matrix
from shared.rundir import RunDirectory
from shared.seeding import torch_seed

log = logging.getLogger("flwr")


@dataclass(frozen=True)
class FederatedSummary:
    """Outcome of a federated run."""

    run_dir: Path
    rounds_run: int
    best_round: int
    val: dict[str, float] | None
    test: dict[str, float] | None
    stopped_early: bool


def initial_model(cfg: RunConfig) -> tuple[OrderedDict[str, torch.Tensor], str]:
    """Global part of a fresh model (seeded) and the catalog hash nodes must match.

    The coordinator needs only the item catalog (public pseudonyms): ``data.catalog-path`` in a
    deployment, else the catalog of ``data.path`` (simulation).
    """
    features = None
    if cfg.data.catalog_path:
        catalog = ItemCatalog.load(cfg.data.catalog_path)
    else:
        tables = load_tables(cfg.data.path, seed=cfg.seed, synthetic_users=cfg.data.synthetic_users,
                             synthetic_items=cfg.data.synthetic_items)
        catalog, features = tables.catalog, genre_matrix(tables)
    with torch_seed(cfg.seed, "global-init"):
        model = build_model(cfg, 1, len(catalog))
    if cfg.model.item_init == "genres" and features is None:
        raise ConfigError("item-init", "no public item genres available (prepare with --item-metadata and "
                                       "give data-path)")
    if cfg.model.item_init != "random" and features is not None:  # genres, or auto with genres at hand
        init_items_from_metadata(model, features, seed=cfg.seed)
    return global_state(model), catalog.content_hash


class FederatedRun:
    """One federated training run on a Flower Grid."""

    def __init__(self, cfg: RunConfig, grid: Grid, flower_run_id: int) -> None:
        self.cfg = cfg
        self.grid = grid
        where = cfg.federation.resume_from or cfg.federation.run_dir or f"runs/run-{flower_run_id}"
        self.run_dir = Path(where).resolve()
        self.flower_run_id = flower_run_id
        self.ledger = FederationLedger(self.run_dir)
        self.central_dp: CentralDP | None = None
        self.after_round: list = []  # callables(round), run after each round's checkpoint

    def _build_strategy(self, run_key: str) -> None:
        if self.cfg.dp.enabled and self.cfg.dp.unit == "node":
            self.central_dp = CentralDP(self.cfg, self.run_dir, run_key)
        self.strategy = build_strategy(self.cfg, self.central_dp)

    # -------------------------------------------------------------------------
    def _start(self) -> tuple[checkpoint.Checkpoint, str]:
        init, catalog_hash = initial_model(self.cfg)
        if self.cfg.federation.resume_from:
            ck = checkpoint.load(self.run_dir)
            self._build_strategy(ck.run_key)
            state = dict(ck.strategy_state)
            self._restore_extra(state)
            restore_strategy_state(self.strategy, state)
            run = RunDirectory(self.run_dir)
            # metrics.jsonl is rewritten from the checkpoint: rounds logged after it are redone, not duplicated
            (self.run_dir / "metrics.jsonl").unlink(missing_ok=True)
            for record in ck.history:
                run.log(record)
            log.info("[fedrec] resuming %s after round %d", self.run_dir, ck.round)
            return ck, catalog_hash
        RunDirectory.create(self.run_dir, self.cfg, kind="federated",
                            extra={"flower_run_id": self.flower_run_id, "catalog_hash": catalog_hash})
        arrays = {k: v.numpy() for k, v in init.items()}
        ck = checkpoint.Checkpoint(round=0, arrays=arrays, run_key=uuid.uuid4().hex)
        self._build_strategy(ck.run_key)
        self._restore_extra({})
        return ck, catalog_hash

    # hooks for runs with more state or a round 0 (server.releases) ------------------------------
    def _restore_extra(self, state: dict) -> None:
        """Take this run's own entries out of a checkpoint's strategy state (none here)."""

    def _extra_state(self) -> dict:
        return {}

    def _before_rounds(self, arrays: ArrayRecord, catalog_hash: str, run_key: str) -> ArrayRecord:
        """Work before round 1 (none here); returns the arrays round 1 starts from."""
        return arrays

    def _last_round(self) -> int:
        """The last training round of the run (the config's, unless a recipe chose fewer)."""
        return self.cfg.federation.rounds

    def execute(self) -> FederatedSummary:
        cfg = self.cfg
        ck, catalog_hash = self._start()
        self.catalog_hash = catalog_hash
        self.manifest = RunManifest(self.run_dir, ck.run_key)
        self.manifest.reconcile(ck.round, self.ledger.entries())  # a crash between ledger and manifest writes
        run = RunDirectory(self.run_dir)
        log.info("[fedrec] run directory %s", self.run_dir)
        arrays = ArrayRecord({k: torch.from_numpy(v) for k, v in ck.arrays.items()})
        if ck.round == 0 and not ck.history:
            arrays = self._before_rounds(arrays, catalog_hash, ck.run_key)
            ck.arrays, ck.strategy_state = {k: a.numpy() for k, a in arrays.items()}, self._state()
            if self._last_round() == 0:  # nothing to train (a recipe's fallback): evaluate what round 0 gave
                record = {"round": 0, "sampled": 0, "answered": 0, "missing": 0, "nodes": [], "rejected": [],
                          "failed": [], "train_loss": None, "train_examples": 0}
                self._evaluate_round(0, arrays, catalog_hash, ck, record)
                ck.history.append(record)
                run.log(record)
            checkpoint.save(self.run_dir, ck)
        for rnd in range(ck.round + 1, self._last_round() + 1):
            if ck.stopped_early:
                break
            if self.central_dp is not None and (reason := self.central_dp.refusal()):
                log.warning("[fedrec] stopping before round %d: %s", rnd, reason)
                break
            t0 = time.perf_counter()
            log.info("[fedrec] round %d/%d", rnd, cfg.federation.rounds)
            record, arrays = self._train_round(rnd, arrays, catalog_hash, ck.run_key)
            if rnd % cfg.eval.every == 0 or rnd == self._last_round():
                self._evaluate_round(rnd, arrays, catalog_hash, ck, record)
            record["seconds"] = time.perf_counter() - t0
            ck.round, ck.arrays = rnd, {k: a.numpy() for k, a in arrays.items()}
            ck.strategy_state = self._state()
            ck.history.append(record)
            run.log(record)
            checkpoint.save(self.run_dir, ck)
            log.info("[fedrec] round %d done: %s", rnd, _brief(record))
            for hook in self.after_round:  # e.g. the simulation layer's coordinator-crash injection
                hook(rnd)
            if cfg.eval.patience and ck.stale >= cfg.eval.patience:
                ck.stopped_early = True
                checkpoint.save(self.run_dir, ck)
                log.info("[fedrec] early stop after round %d (best round %d)", rnd, ck.best_round)
        return self._finish(ck, run)

    def _state(self) -> dict:
        return {**strategy_state(self.strategy), **self._extra_state()}

    def _train_round(self, rnd: int, arrays: ArrayRecord, catalog_hash: str, run_key: str):
        config = ConfigRecord({"run-key": run_key, "catalog-hash": catalog_hash})
        messages = self.strategy.configure_train(rnd, arrays, config, self.grid)
        replies = list(self.grid.send_and_receive(messages, timeout=self.cfg.federation.round_timeout))
        started = time.perf_counter()
        new_arrays, metrics = self.strategy.aggregate_train(rnd, replies)  # validation + aggregation
        aggregation_seconds = time.perf_counter() - started
        report = self.strategy.report
        received = [e for node, lines in report.ledgers.items() for e in self.ledger.update(node, lines)]
        central_entry = None
        if self.central_dp is not None and new_arrays is not None:  # the noisy average is released
            central_entry = self.central_dp.record(rnd, len(report.accepted))
            received += self.ledger.update(0, [json.dumps(e, sort_keys=True) for e in self.central_dp.chain()])
        self.ledger.save()
        self.manifest.record_round(rnd, received)
        record: dict[str, Any] = {
            "round": rnd,
            "sampled": report.sampled,
            "answered": len(replies),
            "missing": max(report.sampled - len(replies), 0),  # no reply by the round deadline
            "nodes": sorted(report.accepted),
            "rejected": [[n, why] for n, why in report.rejected],
            "failed": [[n, why] for n, why in report.failed],
            "bytes_down_per_node": report.bytes_down,
            "bytes_up_per_node": float(np.mean(report.bytes_up)) if report.bytes_up else 0.0,
            "train_loss": float(metrics["train-loss"]) if metrics else None,
            "train_examples": int(metrics["num-examples"]) if metrics else 0,
            "train_seconds_max": float(metrics["train-seconds-max"]) if metrics else None,
            "aggregation_seconds": aggregation_seconds,
        }
        if report.bounded:
            record["norm_bounded"] = [[n, norm] for n, norm in report.bounded]
        if report.epsilons:
            record["epsilon_max"] = max(report.epsilons.values())
        if central_entry is not None:
            record["epsilon_node_level"] = central_entry["epsilon"]
        if new_arrays is None:
            log.warning("[fedrec] round %d: no acceptable update; the global model is unchanged", rnd)
            return record, arrays
        # keep the global model's own dtypes (aggregation may upcast)
        ref = {k: a.numpy().dtype for k, a in arrays.items()}
        fixed = ArrayRecord({k: torch.from_numpy(np.asarray(a.numpy(), dtype=ref[k])) for k, a in new_arrays.items()})
        return record, fixed

    def _evaluate_round(self, rnd: int, arrays: ArrayRecord, catalog_hash: str, ck: checkpoint.Checkpoint,
                        record: dict[str, Any]) -> None:
        cfg = self.cfg
        config = ConfigRecord({"run-key": ck.run_key, "catalog-hash": catalog_hash, "roles": ",".join(ROLES),
                               "full-rank": cfg.eval.full_rank, "floor": self._last_round() == 0})
        messages = self.strategy.configure_evaluate(rnd, arrays, config, self.grid)
        replies = list(self.grid.send_and_receive(messages, timeout=cfg.federation.round_timeout))
        sums = self.strategy.aggregate_evaluate(rnd, replies) or {}
        record["evaluated_nodes"] = sum(1 for m in replies if not m.has_error())
        for role in ROLES:
            record[role] = role_means(sums, role, cfg.eval.top_k, cfg.model.task)
        score = selection_score(record["val"], cfg.eval.top_k, cfg.model.task)
        if score is None:
            return
        if score > ck.best_score or cfg.dp.enabled:  # under DP, private validation selects nothing: the latest round
            ck.best_score, ck.best_round, ck.stale = score, rnd, 0
            ck.best_arrays = {k: a.numpy().copy() for k, a in arrays.items()}
        else:
            ck.stale += 1
        record["best_round"] = ck.best_round

    def _finish(self, ck: checkpoint.Checkpoint, run: RunDirectory) -> FederatedSummary:
        best = ck.best_arrays if ck.best_arrays is not None else ck.arrays
        best_record = next((r for r in ck.history if r["round"] == ck.best_round), None)
        val = best_record.get("val") if best_record else None
        test = best_record.get("test") if best_record else None
        if test is not None and not self.cfg.eval.full_rank and self.cfg.model.task == "implicit":
            test = {**test, **self._full_rank_test(best, ck)}
        run.save_model("model.pt", {"config": self.cfg.to_flower_config(), "global": {
            k: torch.from_numpy(np.array(v)) for k, v in best.items()}, "round": ck.best_round or ck.round})
        run.write_json("summary.json", {"rounds_run": ck.round, "best_round": ck.best_round, "val": val, "test": test,
                                        "stopped_early": ck.stopped_early, "run_key": ck.run_key})
        self.manifest.close(ck.round)
        write_plots(ck.history, self.run_dir, title=f"federated {self.cfg.model.name} ({self.cfg.federation.strategy})")
        log.info("[fedrec] finished: best round %d, val %s, test %s", ck.best_round, val, test)
        return FederatedSummary(self.run_dir, ck.round, ck.best_round, val, test, ck.stopped_early)

    def _full_rank_test(self, best: dict[str, np.ndarray], ck: checkpoint.Checkpoint) -> dict[str, float]:
        """One extra federated evaluation of the selected model on the test split, full-rank.

        Runs with ``eval.full-rank = false`` evaluate cheaply (sampled) every round; the published full-rank
        figures come from this single pass over the model that validation selected.
        """
        arrays = ArrayRecord({k: torch.from_numpy(np.array(v)) for k, v in best.items()})
        config = ConfigRecord({"run-key": ck.run_key, "catalog-hash": self.catalog_hash, "roles": "test",
                               "full-rank": True, "floor": self._last_round() == 0})
        messages = self.strategy.configure_evaluate(ck.round + 1, arrays, config, self.grid)
        replies = list(self.grid.send_and_receive(messages, timeout=self.cfg.federation.round_timeout))
        means = role_means(self.strategy.aggregate_evaluate(ck.round + 1, replies) or {}, "test", self.cfg.eval.top_k,
                           self.cfg.model.task) or {}
        log.info("[fedrec] full-rank test of the selected model: %s", means)
        return {k: v for k, v in means.items() if "full" in k or k.startswith("ild")}


def _brief(record: dict[str, Any]) -> str:
    if record.get("train_loss") is not None:
        first = f"loss {record['train_loss']:.4f}"
    else:  # a noisy-sum release reports no loss (it would be a non-private statistic)
        first = "sum released" if record["nodes"] else "no update"
    parts = [first, f"nodes {len(record['nodes'])}/{record['sampled']}"]
    failed, missing = len(record.get("failed") or []), record.get("missing", 0)
    if failed or missing:
        parts.append(f"answered {record['answered']}/{record['sampled']} (failed {failed}, "
                     f"no reply by the deadline {missing})")
    if record.get("rejected"):
        parts.append(f"rejected {len(record['rejected'])}")
    val = record.get("val") or {}
    parts += [f"val {k} {v:.4f}" for k, v in val.items() if k.startswith("hr") or k == "rmse"]
    return ", ".join(parts)
