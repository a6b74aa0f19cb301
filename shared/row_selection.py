"""DP row selection for item tables (DP-AdaFEST, Ghazi et al., NeurIPS 2023), ``dp.row-threshold > 0``.

Each DP-SGD release of the ``sgd`` mechanism then has two parts over the same Poisson sample:

1. **Row counts.** Every sampled unit contributes ``1/sqrt(p)`` to each of its ``p`` positive items in the
   sample (L2 norm exactly 1 — a user with 5 interactions and one with 500 alike); the sum gets Gaussian noise of
   std ``z1`` (sensitivity 1). Rows whose noisy count exceeds ``threshold * z1`` are *selected*.
2. **Gradient.** The clipped gradient sum (sensitivity ``C = dp.clip-norm``) is restricted to the selected rows of
   every item table (dense layers whole) and gets Gaussian noise of std ``z2 * C`` on those rows only.

Privacy: scaled by their noise, the two parts are one Gaussian mechanism of sensitivity
``sqrt(1/z1^2 + 1/z2^2)`` (adaptive composition of Gaussians is exactly Gaussian in f-DP; Dong, Roth, Su 2022),
so over the shared Poisson sample the release is one subsampled Gaussian of noise multiplier
``z = (z1^-2 + z2^-2)^-1/2``: the plan's multiplier, accounted as before. ``dp.row-selection-share = f`` splits
it: ``z1 = z / sqrt(f)``, ``z2 = z / sqrt(1 - f)``. The ledger records ``z1``, ``z2`` and the threshold; the
auditor recomputes ``z`` from them.

What a release reveals beyond the dense one: nothing that is not DP — which rows carry values is a function of
the noisy counts. Rows not selected get no gradient and no noise, so on a 10^6-item catalog the noise lands on
the few thousand rows the sample used instead of on every row, and a sparse reply carries only those.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

ITEM_TABLES = ("item_emb.", "item_bias.")
COUNTS = "row-counts"  # the raw counts in a central-noise release (the coordinator adds the noise)


def is_item_table(key: str) -> bool:
    """Whether the array ``key`` of the global part is indexed by item (one row per catalog item)."""
    return key.startswith(ITEM_TABLES)


def split_multiplier(z: float, share: float) -> tuple[float, float]:
    """(z1, z2): the selection's and the gradient's noise multipliers that compose to ``z`` (share f on z1)."""
    if not 0 < share < 1:
        raise ValueError(f"row-selection share must be in (0, 1), got {share}")
    if z <= 0:
        return 0.0, 0.0
    return z / math.sqrt(share), z / math.sqrt(1 - share)


def composed_multiplier(z1: float, z2: float) -> float:
    """The one Gaussian mechanism's multiplier of the pair: ``(z1^-2 + z2^-2)^-1/2`` (0 if either is 0)."""
    if z1 <= 0 or z2 <= 0:
        return 0.0
    return 1.0 / math.sqrt(z1**-2 + z2**-2)


def row_contributions(items: np.ndarray, targets: np.ndarray, mask: np.ndarray, n_items: int) -> np.ndarray:
    """(n_items,) float64: the sum over samples of each sample's unit-norm indicator of its positive items.

    ``items``/``targets``/``mask``: (B, T) as the DP loader yields them; positives are entries with target > 0 and
    mask > 0. A sample's positives are distinct items (its interactions are drawn without replacement).
    """
    items, positive = np.asarray(items), (np.asarray(targets) > 0) & (np.asarray(mask) > 0)
    counts = np.zeros(n_items, np.float64)
    per_sample = positive.sum(axis=1)
    weights = np.where(per_sample > 0, 1.0 / np.sqrt(np.maximum(per_sample, 1)), 0.0)
    rows, _ = np.nonzero(positive)
    np.add.at(counts, items[positive], weights[rows])
    return counts


def selected_rows(noisy_counts: np.ndarray, threshold: float, z1: float) -> np.ndarray:
    """Boolean (n_items,): rows whose noisy count exceeds ``threshold * z1`` (post-processing of the counts)."""
    return np.asarray(noisy_counts) > threshold * z1


def restrict(arrays: Mapping[str, np.ndarray], selected: np.ndarray) -> dict[str, np.ndarray]:
    """``arrays`` with every item table's unselected rows set to zero (dense layers unchanged)."""
    out = {}
    for key, value in arrays.items():
        value = np.array(value, copy=True)
        if is_item_table(key):
            value[~selected] = 0
        out[key] = value
    return out
