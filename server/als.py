"""Private ALS on the coordinator (``dp.mechanism = "als"``): item factors from the noisy statistics' sum.

Every round is one pass: the nodes release their users' per-item statistics
(:mod:`client.privacy.als`), the coordinator sums them (in the clear or by SecAgg+; adding the
noise itself under ``dp.noise = central``) and solves every item with a DP count of at least
``dp.train-min-count``: ``v_i = (PSD(G_i) + alpha G + (l2 + 6 sigma sqrt(d)) I)^-1 r_i``. The
noisy Gram is projected onto the PSD cone and the ridge grows with the noise std ``sigma`` so
that noise cannot make the solve explode; items below the count keep their public (genre)
vectors. The model is GMF with ``h = 1`` and no offset: the score is ``u . v`` (with ``model.item-bias`` the
bias table stays 0 in the passes). Below ``dp.als-floor-below`` no pass runs and the floor model of
:mod:`server.releases` (DP item biases on public tag vectors) is served instead. All of it is
post-processing of the releases.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
from flwr.app import ArrayRecord

from server.releases import BIAS
from shared.als_stats import GLOBAL, GRAM, RHS, als_sensitivity, triangle

log = logging.getLogger("flwr")
NOISE_RIDGE = 6.0  # ridge per unit of noise std * sqrt(d): chosen on ML-1M (3 passes, epsilon 8)


def symmetric(upper: np.ndarray, d: int) -> np.ndarray:
    """(..., d, d) symmetric matrices from their upper triangles (diagonal included)."""
    rows, cols = triangle(d)
    out = np.zeros((*upper.shape[:-1], d, d))
    out[..., rows, cols] = upper
    out[..., cols, rows] = upper
    return out


def solve_items(items: np.ndarray, stats: dict[str, np.ndarray], *, alpha: float, l2: float, sigma: float,
                trainable: np.ndarray | None) -> np.ndarray:
    """New item factors from summed (noisy) statistics; rows not ``trainable`` are kept."""
    d = items.shape[1]
    gram_all = symmetric(stats[GLOBAL], d)
    ridge = (l2 + NOISE_RIDGE * sigma * math.sqrt(d)) * np.eye(d)
    grams = symmetric(stats[GRAM], d)
    w, q = np.linalg.eigh(grams)
    psd = (q * np.clip(w, 0, None)[..., None, :]) @ np.swapaxes(q, -1, -2)
    solved = np.linalg.solve(psd + alpha * gram_all + ridge, stats[RHS][..., None])[..., 0]
    out = items.copy()
    rows = slice(None) if trainable is None else trainable
    out[rows] = solved[rows]
    return out


class ALSRounds:
    """Mixin for a release run: every training round is one DP-ALS pass."""

    def _before_rounds(self, arrays: ArrayRecord, catalog_hash: str, run_key: str) -> ArrayRecord:
        arrays = super()._before_rounds(arrays, catalog_hash, run_key)
        if self.releases.rounds == 0:  # the floor model (DP item biases, the vote's user weight): no pass
            return arrays
        out = {k: a.numpy().copy() for k, a in arrays.items()}
        out["out.weight"][:] = 1.0  # GMF's h = 1 and no offset: the score is the dot product u . v
        out["out.bias"][:] = 0.0
        if BIAS in out:  # the passes fit u . v (fixed iALS intercepts from the DP counts measured no better)
            out[BIAS][:] = 0.0
        return ArrayRecord({k: torch.from_numpy(v) for k, v in out.items()})

    def _train_round(self, rnd: int, arrays: ArrayRecord, catalog_hash: str, run_key: str):
        cfg = self.cfg
        table = next(k for k in arrays if k.startswith("item_emb."))
        items = arrays[table].numpy().astype(np.float64)
        n, d = items.shape
        reference = {GRAM: np.zeros((n, d * (d + 1) // 2)), RHS: np.zeros((n, d)), GLOBAL: np.zeros(d * (d + 1) // 2)}
        config = {"run-key": run_key, "catalog-hash": catalog_hash, "release": "als",
                  "planned-rounds": self._last_round()}
        total, report, z = self._sum(rnd, arrays, reference, config)
        sensitivity = als_sensitivity(cfg.dp.max_interactions)
        self._central_noise(total, z, sensitivity)
        self._log_ledgers(rnd, report)
        record = self._record(rnd, report)
        if not report.accepted:
            log.warning("[fedrec] round %d: no ALS release; the item factors are unchanged", rnd)
            return record, arrays
        frozen = self._frozen_rows()
        solved = solve_items(items, total, alpha=cfg.dp.als_unobserved_weight, l2=cfg.dp.als_l2, sigma=z * sensitivity,
                             trainable=None if frozen is None else ~frozen)
        new = {k: torch.from_numpy(a.numpy().copy()) for k, a in arrays.items()}
        new[table] = torch.from_numpy(solved.astype(arrays[table].numpy().dtype))
        return record, ArrayRecord(new)


def als_run(secure: bool):
    """The ALS run class over plain sums or SecAgg+."""
    if secure:
        from server.secagg import SecAggReleases

        return type("SecAggALS", (ALSRounds, SecAggReleases), {})
    from server.releases import ReleaseRun

    return type("ALSReleaseRun", (ALSRounds, ReleaseRun), {})
