"""The DP validation vote that picks the floor model's user weight.

The floor model scores ``a * (u . v) + b``: public genre vectors ``v``, DP item biases ``b``, user rows ``u``
fitted locally and noise-free to convergence at ``a = 1``. Fitted that way the rows overshoot: measured on
the frequency release of ML-1M (10 silos) at epsilon 1, test HR@10 was 0.458 at ``a = 0`` (DP popularity),
0.531 at 0.5 and 0.491 at 1; on ML-100K with one user per node 0.406 / 0.391 / 0.332 (best 0.410 at 0.25).
Which ``a`` is best depends on the data, so the nodes vote on their validation items, with accounted noise.

Each user with a validation item contributes ``h(a_j) - h(0)`` for every candidate ``a_j > 0``, ``h`` its
sampled HR@10 at that weight: a vector in ``{-1, 0, 1}^(m-1)``, so adding or removing one user moves the sum by
at most ``sqrt(m - 1)`` in L2 (the release's sensitivity). The coordinator takes the candidate with the largest
noisy sum (``a = 0``'s sum is 0 by construction): DP popularity is one of the candidates, so the floor falls
below it only by the vote's noise.
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


def winner(noisy_sums: np.ndarray) -> float:
    """The weight with the largest noisy sum (``a = 0`` scores 0); post-processing of the release."""
    scores = np.concatenate([[0.0], np.asarray(noisy_sums, np.float64).ravel()])
    return WEIGHTS[int(np.argmax(scores))]


def unit_weight(global_part: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The floor model's global part at user weight 1 (what its user rows are fitted to): the output layer's
    nonzero weights (the dot-product units, :func:`server.releases._floor_output_layer`) set to 1."""
    weight = global_part.get("out.weight")
    if weight is None:
        return global_part
    return {**global_part, "out.weight": (weight != 0).to(weight.dtype)}
