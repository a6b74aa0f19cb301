"""The format of a DP-ALS release, shared by the nodes that produce it and the coordinator that solves with it.

Per item ``i``: the upper triangle (diagonal included) of ``G_i = sum u u^T`` and ``r_i = sum u`` over the
users counted for it, plus the upper triangle of the global Gram ``sum_u u u^T``; user factors have norm
at most 1 and every user counts at most ``k`` items, so one user moves the release by at most
``sqrt(2k + 1)`` in L2.
"""

from __future__ import annotations

import math

import numpy as np

GRAM, RHS, GLOBAL = "gram", "rhs", "global-gram"


def als_sensitivity(cap: int) -> float:
    """L2 sensitivity of one ALS release for users capped to ``cap`` items (factors of norm <= 1)."""
    return math.sqrt(2 * cap + 1)


def triangle(d: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column indices of the upper triangle (diagonal included) of a d x d matrix."""
    return np.triu_indices(d)
