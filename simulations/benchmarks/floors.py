"""The private floors of the privacy-utility curve: DP popularity and the genre-only model.

Both cost exactly one DP item-frequency release (:func:`client.privacy.releases.frequency_release`:
each user's at most ``dp.frequency-cap`` items and a user count, L2 sensitivity ``sqrt(k + 1)``)
with the whole budget on it and the noise on the sum over the silos (as ``dp.noise = central``,
and ``distributed`` at its threshold up to a factor ``sqrt(n/t)`` of std). Summing the nodes'
capped counts is what the federation computes; doing it here over all users gives the same
release in one process.

- ``popularity``: every user gets the items with the highest DP counts (seen items excluded).
- ``genres``: GMF whose item vectors are the public tag initialisation (genres and release periods) and whose
  item biases are ``shared.floor_vote.item_biases`` of the DP counts, with ``h = 1``; each user's vector is
  fitted locally and noise-free to its own interactions by the fit a node runs (``client.node.fit_floor_rows``).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from client.node import fit_floor_rows
from client.privacy.plan import DPPlan
from client.privacy.releases import frequency_release
from client.trainer import TrainSettings
from shared.accounting import epsilon as account
from shared.accounting import plan_noise
from shared.config import RunConfig
from shared.datasets import load_tables
from shared.evaluation import evaluate_ranking
from shared.floor_vote import item_biases
from shared.interactions import InteractionData
from shared.models import build_model, init_items_from_metadata
from shared.prepared import genre_matrix
from shared.secret_random import SecretRandomness


def floor_point(kind: str, eps: float, values: dict[str, Any], work: Path) -> dict[str, Any]:
    """One point of a floor: release the DP counts at ``eps``, build the floor model, evaluate on test."""
    start = time.perf_counter()
    cfg = RunConfig.from_mapping({**values, "dp.enabled": True, "dp.target-epsilon": eps, "dp.mechanism": "sgd",
                                  "dp.frequency-share": 0.1})
    tables = load_tables(cfg.data.path, seed=cfg.seed)
    data = InteractionData.from_tables(tables)
    k = cfg.dp.frequency_cap
    z = plan_noise(eps, cfg.dp.delta, 1.0, 1, cfg.dp.accountant)
    plan = DPPlan("user", 0.0, 1.0, 1, 1, 1, cfg.dp.clip_norm, cfg.dp.delta, cfg.dp.accountant, eps, data.n_users,
                  mechanism="sgd", noise="central", share=1.0, frequency_multiplier=z, frequency_cap=k)
    counts = frequency_release(data, plan, SecretRandomness.fresh()).numpy()[:-1]
    model = build_model(cfg.with_overrides({"model.item-bias": True}), data.n_users, data.n_items)
    with torch.no_grad():
        for table in model.user_emb.values():
            table.weight.zero_()
        model.out.weight.fill_(0.0 if kind == "popularity" else 1.0)
        model.out.bias.zero_()
        if kind == "popularity":
            model.item_bias.weight[:, 0] = torch.from_numpy(counts.astype(np.float32))
        else:
            init_items_from_metadata(model, genre_matrix(tables), seed=cfg.seed)
            model.item_bias.weight[:, 0] = torch.from_numpy(item_biases(counts).astype(np.float32))
    if kind == "genres":
        settings = TrainSettings.from_config(cfg)
        rng = np.random.default_rng(cfg.seed)
        with torch.no_grad():
            for table in model.user_emb.values():
                table.weight.normal_(0.0, 0.01)
        fit_floor_rows(model, data, settings, rng)
    test = evaluate_ranking(model, data, "test", k=cfg.eval.top_k, full_rank=True).means(cfg.eval.top_k)
    return {
        "unit": "user", "mechanism": kind, "epsilon": account([(z, 1.0, 1)], cfg.dp.delta, cfg.dp.accountant),
        "target_epsilon": eps, "delta": cfg.dp.delta, "accountant": cfg.dp.accountant, "noise": "central (sum)",
        "steps": 1, "hr10": test["hr10"], "ndcg10": test["ndcg10"], "hr10_full": test.get("hr10_full"),
        "ndcg10_full": test.get("ndcg10_full"), "best_round": None, "rounds": 0, "round_seconds": None,
        "peak_rss_mb": None, "wall_seconds": time.perf_counter() - start, "frequency_noise_std": z * math.sqrt(k + 1),
    }
