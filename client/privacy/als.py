"""Private alternating least squares on the node (Chien et al., ICML 2021; billboard model): one ALS release.

With the released item factors ``V`` (and no noise), every user's factor is solved exactly and
locally — the implicit-feedback ridge regression of iALS (Hu et al. 2008) with a uniform weight
``dp.als-unobserved-weight`` (alpha) on the unobserved items:
``u = (sum_{i in S_u} v_i v_i^T + alpha V^T V + l2 I)^-1 sum_{i in S_u} v_i``. The node keeps it (its
user row) and releases, for the coordinator's item solve, the per-item sufficient statistics of its
users with each user factor clipped to norm 1 and each user capped to ``dp.max-interactions``
items drawn at random: ``G_i = sum u u^T`` (upper triangle), ``r_i = sum u`` and the global Gram
``sum_u u u^T``. One user changes them by at most ``sqrt(2k + 1)`` in L2 (k items, each
``||u u^T||_F <= 1`` and ``||u|| <= 1``, plus the global Gram), so with Gaussian noise of std
``z * sqrt(2k + 1)`` per value (this node's share of it) the release is one Gaussian mechanism
per user. The item side it feeds (:mod:`server.als`) is post-processing.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch

from client.privacy.plan import DPPlan
from client.privacy.releases import add_share
from shared.als_stats import GLOBAL, GRAM, RHS, triangle
from shared.config import RunConfig
from shared.interactions import InteractionData
from shared.secret_random import SecretRandomness


def solve_users(data: InteractionData, items: np.ndarray, cfg: RunConfig) -> np.ndarray:
    """(n_users, d) exact iALS user factors against the item factors ``items`` (float64)."""
    d = items.shape[1]
    base = cfg.dp.als_unobserved_weight * items.T @ items + cfg.dp.als_l2 * np.eye(d)
    out = np.zeros((data.n_users, d))
    for u in range(data.n_users):
        own = items[data.train_items[data.train_indptr[u] : data.train_indptr[u + 1]]]
        out[u] = np.linalg.solve(base + own.T @ own, own.sum(axis=0))
    return out


def als_release(data: InteractionData, items: np.ndarray, plan: DPPlan, cfg: RunConfig,
                randomness: SecretRandomness) -> tuple[OrderedDict[str, torch.Tensor], np.ndarray]:
    """This node's noisy ALS statistics and its users' (unclipped) factors."""
    users = solve_users(data, items, cfg)
    norms = np.linalg.norm(users, axis=1, keepdims=True)
    clipped = users / np.maximum(norms, 1.0)
    d = items.shape[1]
    rows, cols = triangle(d)
    gram = np.zeros((data.n_items, len(rows)))
    rhs = np.zeros((data.n_items, d))
    k = cfg.dp.max_interactions
    for u in range(data.n_users):
        own = data.train_items[data.train_indptr[u] : data.train_indptr[u + 1]]
        if len(own) > k:
            own = randomness.numpy.choice(own, size=k, replace=False)
        outer = np.outer(clipped[u], clipped[u])[rows, cols]
        gram[own] += outer
        rhs[own] += clipped[u]
    total = (clipped.T @ clipped)[rows, cols]
    std = plan.noise_multiplier * plan.release_sensitivity
    out = OrderedDict()
    for key, value in ((GRAM, gram), (RHS, rhs), (GLOBAL, total)):
        out[key] = add_share(torch.from_numpy(value), std, plan, randomness)
    return out, users
