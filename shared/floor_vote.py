"""The DP validation vote that picks the floor model's user weight.

The floor model scores ``a * (u . v) + b``: public tag vectors ``v`` (genres, release periods), DP item biases
``b``, user rows ``u`` fitted locally and noise-free to convergence at ``a = 1``. Fitted that way the rows
overshoot: measured on the frequency release of ML-1M (10 silos) at epsilon 1 (genre vectors), test HR@10 was
0.458 at ``a = 0`` (DP popularity), 0.531 at 0.5 and 0.491 at 1; on ML-100K with one user per node 0.406 /
0.391 / 0.332 (best 0.410 at 0.25).
Which ``a`` is best depends on the data, so the nodes vote on their validation items, with accounted noise.

Each user with a validation item contributes ``h(a_j) - h(0)`` for every candidate ``a_j > 0``, ``h`` its
sampled HR@10 at that weight: a vector in ``{-1, 0, 1}^(m-1)``, so adding or removing one user moves the sum by
at most ``sqrt(m - 1)`` in L2 (the release's sensitivity). The coordinator takes the candidate with the largest
noisy sum (``a = 0``'s sum is 0 by construction) among those whose sum is ``dp.floor-vote-margin`` noise stds
above 0: DP popularity is one of the candidates and the default, so the floor falls below it only when the
vote's noise clears the margin.
"""

from __future__ import annotations

import math

import numpy as np
import torch

WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)  # candidates for a; the first is DP popularity (the biases alone)
VOTE = "floor-vote"  # the release's name and the key of its array


def sensitivity() -> float:
    """L2 bound of one user's contribution to the vote (before noise)."""
    return math.sqrt(len(WEIGHTS) - 1)


def contribution(hits: np.ndarray) -> np.ndarray:
    """``(m - 1,)`` sum over users of ``hits[:, j] - hits[:, 0]``, ``hits`` ``(users, m)`` 0/1 per weight."""
    hits = np.asarray(hits, np.float64)
    return (hits[:, 1:] - hits[:, :1]).sum(axis=0)


def winner(noisy_sums: np.ndarray, noise_std: float = 0.0, margin: float = 0.0) -> float:
    """The weight with the largest noisy sum, counting only sums above ``margin * noise_std``; ``a = 0`` (its sum
    is 0) when none is. Post-processing of the release (``noise_std`` and ``margin`` are public).

    The margin is a one-sided test against DP popularity: where the noise std is as large as the differences
    (few voters, small epsilon), the noisy argmax is near a coin and would serve a user term that is worse than
    the biases alone by as much as it is better; with the margin that case keeps popularity.
    """
    sums = np.asarray(noisy_sums, np.float64).ravel()
    scores = np.concatenate([[0.0], np.where(sums > margin * noise_std, sums, -np.inf)])
    return WEIGHTS[int(np.argmax(scores))]


def noise_std(noise: str, multiplier: float, sensitivity: float, voters: int, share: float) -> float:
    """Std of the noise in the vote's sum over ``voters`` nodes: central ``z * s``; each node adding ``share`` of
    the variance (local 1, distributed 1/t): ``z * s * sqrt(voters * share)``."""
    scale = 1.0 if noise == "central" else math.sqrt(voters * share)
    return multiplier * sensitivity * scale


def item_biases(counts: np.ndarray) -> np.ndarray:
    """Item biases from DP item counts (post-processing): ``sign(c) log(1 + |c|)``, centred.

    Strictly increasing in the noisy count, so at ``a = 0`` the floor ranks exactly as DP popularity. Clipping
    negative noisy counts to 0 instead tied every such item, and the evaluation counts ties against the held-out
    item: on ML-100K with one user per node at epsilon 1 that served 0.374 where DP popularity had 0.406.
    """
    c = np.asarray(counts, np.float64)
    log_counts = np.sign(c) * np.log1p(np.abs(c))
    return log_counts - log_counts.mean()


def unit_weight(global_part: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The floor model's global part at user weight 1 (what its user rows are fitted to): the output layer's
    nonzero weights (the dot-product units, :func:`server.releases._floor_output_layer`) set to 1."""
    weight = global_part.get("out.weight")
    if weight is None:
        return global_part
    return {**global_part, "out.weight": (weight != 0).to(weight.dtype)}
