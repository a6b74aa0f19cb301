"""The coordinator's side of noisy-sum releases (``dp.mechanism = "sgd"``): sum, noise, step.

Round 0 is the DP item-frequency release: the summed noisy counts give DP popularity (kept in
the run directory, ``dp_item_counts.npy``: the private floor), the DP user count ``N`` and the
item biases' starting point (``shared.floor_vote.item_biases``: sign(c) log(1 + |c|), centred); when the
recipe trains nothing, a second count release and the floor vote (:mod:`shared.floor_vote`) follow, and the
floor model is served at the user weight voted.
Every round after is one DP-SGD step:
the nodes' clipped-gradient sums, summed over nodes (in the clear, or by SecAgg+ through
:class:`server.secagg.SecAggReleases`), plus the coordinator's noise under ``dp.noise =
central``, divided by the expected batch ``q * N``, drive a momentum SGD step (``dp.server-lr``,
``dp.server-momentum``) of the global part; item rows whose DP count is below
``dp.train-min-count`` keep their public (genre) initialisation. With DP row selection
(``dp.row-threshold``, :mod:`shared.row_selection`) only the selected item rows get a gradient and
noise. Everything here is post-processing of the releases, so it costs no privacy.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord

from server.guard import RoundReport, collect_privacy, densify_rows, failed_reply, reply_problem
from server.loop import FederatedRun
from shared import floor_vote
from shared.atomic import atomic_write_bytes
from shared.config import RunConfig
from shared.row_selection import COUNTS as ROW_COUNTS
from shared.row_selection import is_item_table, restrict, selected_rows, split_multiplier
from shared.secret_random import SecretRandomness
from shared.secure_sum import noise_share, vote_sensitivity

log = logging.getLogger("flwr")
COUNTS = "counts"
ROUNDS = "rounds"
STATE = "dp-release"  # key of the release state in the checkpoint's strategy state
BIAS = "item_bias.weight"
# The recipe's rounds: with rho = epsilon * q * N (N the DP user count), one round per RHO_PER_ROUND, capped by
# federation.rounds; below dp.floor-below (default 20,000) no model is trained and the floor model (DP item biases
# on public tag vectors, users fitted locally, the floor vote's user weight) is released. Measured 2026-12-08
# (docs/reference/results.md, ML-1M 10 silos, central noise, test HR@10 / full-rank): at rho ~12,000 (epsilon 2)
# trained 0.515 / 0.057, the floor 0.575 / 0.061; at rho ~24,000 (epsilon 4) trained 0.576 / 0.058, the floor
# 0.574 / 0.060 (a tie); at rho ~48,000 (epsilon 8) training (0.610 / 0.064) is above the floor at epsilon 4.
RHO_PER_ROUND = 1000.0


def training_rounds(cfg: RunConfig, users: float) -> int:
    """Rounds to train, from public settings and the DP user count only (no privacy cost)."""
    if cfg.dp.mechanism == "als":  # a pass uses every user (q = 1); its own threshold (dp.als-floor-below)
        return 0 if cfg.dp.target_epsilon * users < cfg.dp.als_floor_below else cfg.federation.rounds
    rho = cfg.dp.target_epsilon * cfg.dp.sample_rate * users
    if rho < cfg.dp.floor_below:
        return 0
    return int(min(cfg.federation.rounds, max(1, round(rho / RHO_PER_ROUND))))


class Releases:
    """Release state of a run: DP counts, user count and the server optimizer's momentum."""

    def __init__(self, state: dict[str, np.ndarray] | None = None) -> None:
        state = state or {}
        self.counts: np.ndarray | None = state.get(COUNTS)
        self.rounds: int | None = int(state[ROUNDS][0]) if ROUNDS in state else None
        self.momentum = {k[2:]: v for k, v in state.items() if k.startswith("m:")}

    def state(self) -> dict[str, np.ndarray]:
        out = {f"m:{k}": v for k, v in self.momentum.items()}
        if self.counts is not None:
            out[COUNTS] = self.counts
        if self.rounds is not None:
            out[ROUNDS] = np.array([self.rounds])
        return out

    @property
    def users(self) -> float:
        """The DP user count (at least 1)."""
        return max(float(self.counts[-1]), 1.0) if self.counts is not None else 1.0


class ReleaseRun(FederatedRun):
    """A federated run whose rounds are noisy-sum releases (DP-SGD with the noise on the sum)."""

    def _restore_extra(self, state: dict) -> None:
        self.releases = Releases(state.pop(STATE, None))

    def _extra_state(self) -> dict:
        return {STATE: self.releases.state()}

    # --- one release: send, collect, validate, sum ---------------------------------------------
    def _sum(self, rnd: int, arrays: ArrayRecord, reference: dict[str, np.ndarray], config: dict[str, Any]):
        """Sum of the valid replies' arrays (plus central noise later); (sum, report)."""
        messages = self.strategy.configure_train(rnd, arrays, ConfigRecord(config), self.grid)
        replies = list(self.grid.send_and_receive(messages, timeout=self.cfg.federation.round_timeout))
        report = RoundReport(sampled=len(messages), bytes_down=arrays.count_bytes())
        total = {k: np.zeros_like(v, dtype=np.float64) for k, v in reference.items()}
        multipliers, seconds = [], []
        for msg in replies:
            node = msg.metadata.src_node_id
            if failed_reply(msg, report, rnd, "release"):
                continue
            collect_privacy(msg, node, report)
            sent = sum(r.count_bytes() for r in msg.content.array_records.values())  # as sent (sparse rows)
            problem = densify_rows(msg, reference) if self.cfg.transport.item_updates == "sparse" else None
            problem = problem or reply_problem(msg, reference, math.inf)
            if problem:
                report.rejected.append((node, problem))
                log.warning("round %d: rejected release of node %d: %s", rnd, node, problem)
                continue
            record = next(iter(msg.content.array_records.values()))
            for key in total:
                total[key] += record[key].numpy()
            report.accepted.append(node)
            report.bytes_up.append(sent)
            metrics = next(iter(msg.content.metric_records.values()))
            multipliers.append(float(metrics.get("noise-multiplier", 0.0)))
            seconds.append(float(metrics.get("train-seconds", 0.0)))
        report.seconds = max(seconds, default=None)
        return total, report, max(multipliers, default=0.0)

    def _central_noise(self, total: dict[str, np.ndarray], z: float, sensitivity: float,
                       rows: np.ndarray | None = None) -> None:
        """Under ``dp.noise = central``: N(0, (z * sensitivity)^2) on every value (item tables: on ``rows`` only)."""
        if self.cfg.dp.noise != "central" or z <= 0:
            return
        randomness = SecretRandomness.fresh()
        for key, value in total.items():
            if rows is not None and is_item_table(key):
                value[rows] += randomness.gaussian(value[rows].shape, z * sensitivity, torch.float64).numpy()
            else:
                value += randomness.gaussian(value.shape, z * sensitivity, torch.float64).numpy()

    def _select_rows(self, total: dict[str, np.ndarray], z: float) -> tuple[np.ndarray | None, float]:
        """DP row selection (:mod:`shared.row_selection`): (selected rows or None, the gradient's multiplier).

        Central noise: the coordinator noises the summed row counts and selects; local noise: each node selected
        its own rows, and the union is the rows its sums carry. Unselected rows of the item tables are zeroed.
        """
        dp = self.cfg.dp
        if dp.row_threshold <= 0:
            return None, z
        z1, z2 = split_multiplier(z, dp.row_selection_share)
        counts = total.pop(ROW_COUNTS, None)
        if counts is not None:
            self._central_noise({ROW_COUNTS: counts}, z1, 1.0)
            rows = selected_rows(counts, dp.row_threshold, z1)
        else:
            table = next(v for k, v in total.items() if is_item_table(k))
            rows = table.reshape(len(table), -1).any(axis=1)
        total.update(restrict(total, rows))
        return rows, z2

    # --- round 0: DP item counts -------------------------------------------------------------
    def _before_rounds(self, arrays: ArrayRecord, catalog_hash: str, run_key: str) -> ArrayRecord:
        if self.releases.counts is not None or self.cfg.dp.frequency_share <= 0:
            return arrays
        n_items = next(a for k, a in arrays.items() if k.startswith("item_emb.")).numpy().shape[0]
        reference = {COUNTS: np.zeros(n_items + 1, np.float64)}
        config = {"run-key": run_key, "catalog-hash": catalog_hash, "release": "frequency"}
        total, report, z = self._sum(0, arrays, reference, config)
        self._central_noise(total, z, math.sqrt(self.cfg.dp.frequency_cap + 1))
        self._log_ledgers(0, report)
        if not report.accepted:
            log.warning("[fedrec] no node released its item counts: item biases start at zero")
            return arrays
        self.releases.counts = total[COUNTS]
        self.releases.rounds = training_rounds(self.cfg, self.releases.users)
        log.info("[fedrec] DP item counts released by %d node(s); DP user count %.0f; recipe: %d training round(s)",
                 len(report.accepted), self.releases.users, self.releases.rounds)
        if self.releases.rounds == 0:  # too little data to train at this epsilon: the rest goes to the counts
            log.info("[fedrec] too little data for this epsilon: the rest of the budget goes to a second release of "
                     "the item counts and the floor model (public tag vectors, DP item biases) is released")
            again, report2, z2 = self._sum(0, arrays, reference, {**config, "final": True})
            self._central_noise(again, z2, math.sqrt(self.cfg.dp.frequency_cap + 1))
            self._log_ledgers(0, report2)
            if report2.accepted and z > 0 and z2 > 0:  # inverse-variance weighted: same sensitivity, noise z and z2
                w1, w2 = 1 / z**2, 1 / z2**2
                self.releases.counts = (w1 * total[COUNTS] + w2 * again[COUNTS]) / (w1 + w2)
        _save_npy(self.run_dir / "dp_item_counts.npy", self.releases.counts[:-1])
        out = {k: a.numpy() for k, a in arrays.items()}
        if BIAS in out:  # every item's bias starts at its DP log-popularity (post-processing; floor_vote.item_biases)
            biases = floor_vote.item_biases(self.releases.counts[:-1])
            out[BIAS] = biases.astype(out[BIAS].dtype).reshape(out[BIAS].shape)
        if self.releases.rounds == 0:
            _floor_output_layer(out, self.cfg.model.embedding_dim)
            if self.cfg.dp.floor_vote_share > 0 and np.any(out.get("out.weight", 0)):
                out["out.weight"] = out["out.weight"] * self._floor_vote(out, config)
        return _record_of(out)

    def _floor_vote(self, floor: dict[str, np.ndarray], config: dict[str, Any]) -> float:
        """The floor model's user weight ``a``, picked by the nodes' DP validation vote (:mod:`shared.floor_vote`)."""
        reference = {floor_vote.VOTE: np.zeros(len(floor_vote.WEIGHTS) - 1, np.float64)}
        total, report, z = self._sum(0, _record_of(floor), reference,
                                     {**config, "release": floor_vote.VOTE, "final": True})
        self._central_noise(total, z, floor_vote.sensitivity())
        self._log_ledgers(0, report)
        noise = self.cfg.dp.noise
        std = floor_vote.noise_std(noise, z, vote_sensitivity(noise, self.cfg), len(report.accepted),
                                   noise_share(self.cfg))
        margin = self.cfg.dp.floor_vote_margin
        weight = floor_vote.winner(total[floor_vote.VOTE], std, margin) if report.accepted else 1.0
        doc = {"weights": list(floor_vote.WEIGHTS), "noisy_sums": [0.0, *total[floor_vote.VOTE].tolist()],
               "noise_multiplier": z, "noise_std": std, "margin": margin, "voters": len(report.accepted),
               "weight": weight}
        atomic_write_bytes(self.run_dir / "floor_vote.json", json.dumps(doc, indent=1).encode())
        log.info("[fedrec] floor model: %d node(s) voted on validation (DP, z = %.3g, noise std %.3g, margin %.3g "
                 "stds); user weight %.2g of %s", len(report.accepted), z, std, margin, weight,
                 list(floor_vote.WEIGHTS))
        return weight

    def _last_round(self) -> int:
        return self.cfg.federation.rounds if self.releases.rounds is None else self.releases.rounds

    def _log_ledgers(self, rnd: int, report: RoundReport) -> None:
        received = [e for node, lines in report.ledgers.items() for e in self.ledger.update(node, lines)]
        self.ledger.save()
        self.manifest.record_round(rnd, received)

    # --- rounds 1..T: one DP-SGD step each ---------------------------------------------------
    def _train_round(self, rnd: int, arrays: ArrayRecord, catalog_hash: str, run_key: str):
        cfg = self.cfg
        reference = {k: np.zeros_like(a.numpy()) for k, a in arrays.items()}
        if cfg.dp.row_threshold > 0 and cfg.dp.noise == "central":  # the nodes' raw row counts come with the sums
            n_items = next(a for k, a in arrays.items() if is_item_table(k)).numpy().shape[0]
            reference[ROW_COUNTS] = np.zeros(n_items, np.float64)
        config = {"run-key": run_key, "catalog-hash": catalog_hash, "release": "gradient",
                  "planned-rounds": self._last_round()}
        total, report, z = self._sum(rnd, arrays, reference, config)
        rows, z_gradient = self._select_rows(total, z)
        self._central_noise(total, z_gradient, cfg.dp.clip_norm, rows)
        self._log_ledgers(rnd, report)
        record = self._record(rnd, report)
        if rows is not None:
            record["rows_selected"] = int(rows.sum())
        if not report.accepted:
            log.warning("[fedrec] round %d: no release; the global model is unchanged", rnd)
            return record, arrays
        batch = max(cfg.dp.sample_rate * self.releases.users, 1.0)
        frozen = self._frozen_rows()
        new = {}
        for key, value in arrays.items():
            grad = total[key] / batch
            if frozen is not None and key.startswith("item_emb."):
                grad[frozen] = 0.0
            m = self.releases.momentum.get(key)
            m = grad if m is None else cfg.dp.server_momentum * m + grad
            self.releases.momentum[key] = m
            old = value.numpy()
            new[key] = torch.from_numpy((old - cfg.dp.server_lr * m).astype(old.dtype))
        return record, ArrayRecord(new)

    def _frozen_rows(self) -> np.ndarray | None:
        if self.cfg.dp.train_min_count <= 0 or self.releases.counts is None:
            return None
        return self.releases.counts[:-1] < self.cfg.dp.train_min_count

    def _record(self, rnd: int, report: RoundReport) -> dict[str, Any]:
        record: dict[str, Any] = {
            "round": rnd, "sampled": report.sampled, "answered": len(report.accepted) + len(report.rejected),
            "missing": max(report.sampled - len(report.accepted) - len(report.rejected) - len(report.failed), 0),
            "nodes": sorted(report.accepted), "rejected": [[n, why] for n, why in report.rejected],
            "failed": [[n, why] for n, why in report.failed], "bytes_down_per_node": report.bytes_down,
            "bytes_up_per_node": float(np.mean(report.bytes_up)) if report.bytes_up else 0.0,
            "train_loss": None, "train_examples": 0, "train_seconds_max": getattr(report, "seconds", None),
        }
        if report.epsilons:
            record["epsilon_max"] = max(report.epsilons.values())
        return record


def _record_of(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()})


def _save_npy(path: Path, values: np.ndarray) -> None:
    import io

    buf = io.BytesIO()
    np.save(buf, values)
    atomic_write_bytes(path, buf.getvalue())


def _floor_output_layer(arrays: dict[str, np.ndarray], dim: int) -> None:
    """The floor model's score is ``u . v + bias`` (public tag vectors, locally fitted users, DP biases).

    GMF starts that way; NeuMF's fused layer starts random, so its GMF part becomes the plain dot product and its
    untrained MLP tower is switched off; the MLP model (no dot product) ranks by the DP biases alone. Public
    post-processing: no budget.
    """
    weight = arrays.get("out.weight")
    if weight is None:
        return
    weight = np.zeros_like(weight)
    if "item_emb.gmf.weight" in arrays:
        weight[:, :dim] = 1.0
    arrays["out.weight"] = weight
    if "out.bias" in arrays:
        arrays["out.bias"] = np.zeros_like(arrays["out.bias"])
