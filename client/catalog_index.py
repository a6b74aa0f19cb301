"""Approximate top-K over a large catalog for linear scorers (GMF): an inverted-file (IVF) index.

Exact scoring reads the whole item matrix for every request (10⁶ items x 32 dims = 128 MB: ~15 ms of memory
bandwidth on a small CPU). For a score that is an inner product ``s_i = q · x_i`` (GMF: ``q = [p_u, 1]``,
``x_i = [q_i ∘ h, b_i + b]``), the index clusters the item vectors with k-means into ``lists`` groups (seeded
from the model's weights, so two builds of one model agree) and, per request, scores the centroids, keeps the
``probes`` best lists and scores their items exactly. The returned scores are exact; only the candidate set is
approximate: an item in an unprobed list is missed. Recall against exact top-K is measured by the serving
benchmark (``--approximate``), not assumed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shared import metrics


@dataclass(frozen=True)
class CatalogIndex:
    """Items grouped by nearest centroid: ``order[ptr[c]:ptr[c+1]]`` are the items of list ``c``."""

    centroids: np.ndarray  # (lists, d+1) float32
    order: np.ndarray  # (n_items,) int64, items sorted by list
    ptr: np.ndarray  # (lists+1,) int64
    vectors: np.ndarray  # (n_items, d+1) float32, rows in ``order``'s order (contiguous per list)
    probes: int

    @classmethod
    def build(cls, item_matrix: np.ndarray, offset: np.ndarray | float, *, lists: int = 0, probes: int = 0,
              iterations: int = 8, seed: int = 0) -> CatalogIndex:
        """Index ``s = u @ item_matrix + offset`` (item_matrix (d, n), offset scalar or (n,)).

        Defaults: ``lists = round(sqrt(n))``; ``probes`` so that about ``max(n / 16, 4096)`` items are scored
        exactly (every list for catalogs under 4,096 items: exact there). k-means is fitted on a sample of at most
        64 items per list and every item is then assigned to its nearest centroid.
        """
        d, n = item_matrix.shape
        x = np.empty((n, d + 1), np.float32)
        x[:, :d] = item_matrix.T
        x[:, d] = offset
        lists = lists or max(1, round(np.sqrt(n)))
        rng = np.random.default_rng(seed)
        sample = x[rng.choice(n, size=min(n, 64 * lists), replace=False)]
        centroids = sample[rng.choice(len(sample), size=lists, replace=False)].copy()
        for _ in range(iterations):
            labels = _nearest(sample, centroids)
            sums = np.zeros_like(centroids, dtype=np.float64)
            np.add.at(sums, labels, sample)
            counts = np.bincount(labels, minlength=lists)
            filled = counts > 0
            centroids[filled] = (sums[filled] / counts[filled, None]).astype(np.float32)
        labels = _nearest(x, centroids)
        order = np.argsort(labels, kind="stable").astype(np.int64)
        ptr = np.zeros(lists + 1, np.int64)
        ptr[1:] = np.cumsum(np.bincount(labels, minlength=lists))
        probes = probes or min(lists, max(lists // 16, -(-4096 * lists // n)))
        return cls(centroids, order, ptr, np.ascontiguousarray(x[order]), probes)

    def top_k(self, user: np.ndarray, k: int, excluded: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(items (k,), scores (k,)) for one user vector ``user`` (d,): best-first, -1/NaN padded.

        ``excluded``: catalog rows never returned (the user's seen items). Ties go to the lower catalog row.
        """
        q = np.append(np.asarray(user, np.float32), np.float32(1.0))
        probes = min(self.probes, len(self.centroids))
        best = np.argpartition(-(self.centroids @ q), probes - 1)[:probes]
        pos = np.concatenate([np.arange(self.ptr[c], self.ptr[c + 1]) for c in best])  # probes >= 1
        items = self.order[pos]
        scores = self.vectors[pos] @ q
        if excluded is not None and len(excluded):
            keep = ~np.isin(items, excluded)
            items, scores = items[keep], scores[keep]
        order = np.argsort(items, kind="stable")  # ties: lower catalog row first, as exact top-K
        items, scores = items[order], scores[order]
        top = metrics.top_k(scores[None, :], k)[0]
        out_items = np.full(k, -1, np.int64)
        out_scores = np.full(k, np.nan, np.float32)
        valid = top >= 0
        out_items[: valid.sum()] = items[top[valid]]
        out_scores[: valid.sum()] = scores[top[valid]]
        return out_items, out_scores


def _nearest(x: np.ndarray, centroids: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """Index of the nearest centroid (Euclidean) for each row of ``x``, in chunks of ``chunk`` rows."""
    c_sq = np.square(centroids).sum(axis=1)
    out = np.empty(len(x), np.int64)
    for s in range(0, len(x), chunk):
        block = x[s : s + chunk]
        out[s : s + chunk] = np.argmin(c_sq[None, :] - 2.0 * (block @ centroids.T), axis=1)
    return out
