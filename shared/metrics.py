"""Ranking, beyond-accuracy and rating metrics: pure, vectorized numpy functions.

Conventions:

* Items are integer indices ``0..n_items-1``; ``-1`` marks padding in top-k lists.
* Ranks are 0-based (rank 0 = top) and returned as ``int64``.
* Ties are counted against the positive: a candidate scoring *equal* to the
  positive ranks above it, so a constant model gets the worst possible rank
  (number of candidates - 1) and never looks good.
* NaN scores are rejected (``ValueError``): a NaN compares false and would
  silently flatter the model.
* Per-user metrics return per-user ``float64`` arrays so a federation can
  aggregate exact sums and counts; the caller averages.
* Exclusion sets (e.g. training items) are CSR: ``indptr`` of length ``U + 1``,
  row ``u`` is ``indices[indptr[u]:indptr[u + 1]]``; duplicates are harmless.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "catalog_coverage",
    "full_ranks",
    "hit_rate",
    "intra_list_diversity",
    "mae",
    "mask_excluded",
    "ndcg",
    "novelty",
    "rmse",
    "sampled_ranks",
    "top_k",
]


def _scores(x: np.ndarray, name: str, ndim: int) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {a.shape}")
    if a.dtype.kind not in "biuf":
        raise ValueError(f"{name} must be real numeric, got dtype {a.dtype}")
    if a.dtype.kind == "f" and np.isnan(a).any():
        raise ValueError(f"{name} contains NaN")
    return a


def _int_array(x: np.ndarray, name: str, ndim: int) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {a.shape}")
    if a.size and a.dtype.kind not in "iu":
        raise ValueError(f"{name} must be integer, got dtype {a.dtype}")
    return a.astype(np.int64, copy=False)


def _check_k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    return int(k)


def _exclusion_mask(
    shape: tuple[int, int], exclude_indptr: np.ndarray, exclude_indices: np.ndarray
) -> np.ndarray:
    """Validate a CSR exclusion set and return it as a dense ``(U, I)`` bool mask."""
    n_users, n_items = shape
    indptr = _int_array(exclude_indptr, "exclude_indptr", 1)
    indices = _int_array(exclude_indices, "exclude_indices", 1)
    if indptr.shape[0] != n_users + 1:
        raise ValueError(
            f"exclude_indptr must have length n_users + 1 = {n_users + 1}, got {indptr.shape[0]}"
        )
    counts = np.diff(indptr)
    if indptr[0] != 0 or (counts < 0).any() or indptr[-1] != indices.shape[0]:
        raise ValueError("exclude_indptr must start at 0, be non-decreasing and end at len(exclude_indices)")
    if indices.size and (indices.min() < 0 or indices.max() >= n_items):
        raise ValueError(f"exclude_indices must lie in [0, {n_items})")
    mask = np.zeros(shape, dtype=bool)
    mask[np.repeat(np.arange(n_users), counts), indices] = True
    return mask


def mask_excluded(scores: np.ndarray, exclude_indptr: np.ndarray, exclude_indices: np.ndarray) -> np.ndarray:
    """Return a copy of ``scores`` (U, I) with CSR-excluded entries set to ``-inf``.

    Floating dtypes are kept; other dtypes are converted to float64.
    """
    s = _scores(scores, "scores", 2)
    mask = _exclusion_mask(s.shape, exclude_indptr, exclude_indices)
    out = s.astype(s.dtype if s.dtype.kind == "f" else np.float64, copy=True)
    out[mask] = -np.inf
    return out


def sampled_ranks(
    pos_scores: np.ndarray, neg_scores: np.ndarray, valid: np.ndarray | None = None
) -> np.ndarray:
    """Rank of each positive among its sampled negatives.

    ``pos_scores`` (U,), ``neg_scores`` (U, N); ``valid`` (U, N) bool marks real
    negatives (padding ``False``). rank[u] = number of valid negatives with
    score >= pos_scores[u] (ties against the positive). Returns int64 (U,).
    """
    pos = _scores(pos_scores, "pos_scores", 1)
    neg = _scores(neg_scores, "neg_scores", 2)
    if neg.shape[0] != pos.shape[0]:
        raise ValueError(f"neg_scores has {neg.shape[0]} rows but pos_scores has {pos.shape[0]}")
    hits = neg >= pos[:, None]
    if valid is not None:
        v = np.asarray(valid)
        if v.shape != neg.shape or v.dtype != bool:
            raise ValueError(f"valid must be a bool array of shape {neg.shape}, got {v.dtype} {v.shape}")
        hits &= v
    return np.count_nonzero(hits, axis=1).astype(np.int64)


def full_ranks(
    scores: np.ndarray,
    positives: np.ndarray,
    exclude_indptr: np.ndarray,
    exclude_indices: np.ndarray,
) -> np.ndarray:
    """Rank of each held-out positive among all non-excluded items.

    ``scores`` (U, I); ``positives`` (U,) item index of each user's positive;
    CSR exclusion rows list items removed from the candidate set (e.g. training
    items). The positive itself is never excluded, even if listed. rank[u] =
    number of non-excluded items other than the positive with score >= the
    positive's score (ties against the positive). Returns int64 (U,).
    """
    s = _scores(scores, "scores", 2)
    pos = _int_array(positives, "positives", 1)
    n_users, n_items = s.shape
    if pos.shape[0] != n_users:
        raise ValueError(f"positives has length {pos.shape[0]} but scores has {n_users} rows")
    if pos.size and (pos.min() < 0 or pos.max() >= n_items):
        raise ValueError(f"positives must lie in [0, {n_items})")
    rows = np.arange(n_users)
    excluded = _exclusion_mask(s.shape, exclude_indptr, exclude_indices)
    excluded[rows, pos] = False
    at_or_above = s >= s[rows, pos][:, None]
    at_or_above &= ~excluded
    # The positive always satisfies score >= itself; do not count it.
    return np.count_nonzero(at_or_above, axis=1).astype(np.int64) - 1


def _ranks(ranks: np.ndarray) -> np.ndarray:
    r = np.asarray(ranks)
    if r.dtype.kind not in "iuf":
        raise ValueError(f"ranks must be numeric, got dtype {r.dtype}")
    if r.size and not (r.min() >= 0):  # also rejects NaN
        raise ValueError("ranks must be non-negative")
    return r


def hit_rate(ranks: np.ndarray, k: int) -> np.ndarray:
    """Per-user HR@k: 1.0 if rank < k else 0.0 (float64, same shape as ``ranks``)."""
    k = _check_k(k)
    return (_ranks(ranks) < k).astype(np.float64)


def ndcg(ranks: np.ndarray, k: int) -> np.ndarray:
    """Per-user NDCG@k for one relevant item: 1/log2(rank + 2) if rank < k else 0."""
    k = _check_k(k)
    r = _ranks(ranks).astype(np.float64)
    return np.where(r < k, 1.0 / np.log2(np.minimum(r, k) + 2.0), 0.0)


def top_k(
    scores: np.ndarray,
    k: int,
    exclude_indptr: np.ndarray | None = None,
    exclude_indices: np.ndarray | None = None,
) -> np.ndarray:
    """Top-k item indices per user, (U, k) int64, by descending score.

    Excluded items are never returned; ties are broken by lower item index
    (deterministic); rows with fewer than k candidates are padded with -1.
    Uses a partial partition (no full sort) over each row.
    """
    k = _check_k(k)
    s = _scores(scores, "scores", 2)
    if (exclude_indptr is None) != (exclude_indices is None):
        raise ValueError("exclude_indptr and exclude_indices must be given together")
    n_users, n_items = s.shape
    out = np.full((n_users, k), -1, dtype=np.int64)
    k_eff = min(k, n_items)
    if k_eff == 0 or n_users == 0:
        return out
    key = s.astype(s.dtype if s.dtype.kind == "f" else np.float64, copy=True)
    candidate: np.ndarray | bool = True
    if exclude_indptr is not None:
        excluded = _exclusion_mask(s.shape, exclude_indptr, exclude_indices)
        key[excluded] = -np.inf
        candidate = ~excluded
    # Threshold t[u] = k_eff-th largest key; everything above t is selected,
    # items equal to t fill the remaining slots lowest index first.
    thresh = -np.partition(-key, k_eff - 1, axis=1)[:, k_eff - 1 : k_eff]
    above = key > thresh
    need = k_eff - np.count_nonzero(above, axis=1)
    tied = (key == thresh) & candidate
    excess = np.count_nonzero(tied, axis=1) > need  # rows needing a tie-break
    if excess.any():
        sub = tied[excess]
        tied[excess] = sub & (np.cumsum(sub, axis=1) <= need[excess, None])
    rows, cols = np.nonzero(above | tied)  # row-major: rows grouped, cols ascending
    order = np.lexsort((cols, -key[rows, cols], rows))
    rows, cols = rows[order], cols[order]
    counts = np.bincount(rows, minlength=n_users)
    starts = np.cumsum(counts) - counts
    out[rows, np.arange(rows.shape[0]) - np.repeat(starts, counts)] = cols
    return out


def _topk_lists(topk: np.ndarray, n_items: int) -> tuple[np.ndarray, np.ndarray]:
    """Validate (U, k) lists; return (int64 lists, valid mask).

    Padding stays -1, so gathering from a table with one extra trailing row
    (zeros) maps padding to that row.
    """
    t = _int_array(topk, "topk", 2)
    if t.size and (t.min() < -1 or t.max() >= n_items):
        raise ValueError(f"topk entries must be -1 (padding) or lie in [0, {n_items})")
    return t, t >= 0


def catalog_coverage(topk: np.ndarray, n_items: int) -> float:
    """Fraction of the catalogue appearing in any list: distinct items (ignoring -1) / n_items."""
    if isinstance(n_items, bool) or not isinstance(n_items, (int, np.integer)) or n_items < 1:
        raise ValueError(f"n_items must be a positive integer, got {n_items!r}")
    t, valid = _topk_lists(topk, int(n_items))
    return float(np.unique(t[valid]).shape[0] / n_items)


def intra_list_diversity(topk: np.ndarray, item_vectors: np.ndarray) -> np.ndarray:
    """Per-list mean pairwise cosine distance (1 - cosine similarity), float64 (U,).

    Only valid entries (not -1) count; lists with fewer than 2 items score 0.
    A zero vector has similarity 0 with everything (distance 1).
    """
    vecs = _scores(item_vectors, "item_vectors", 2).astype(np.float64)
    if not np.isfinite(vecs).all():
        raise ValueError("item_vectors must be finite")
    t, valid = _topk_lists(topk, vecs.shape[0])
    norms = np.linalg.norm(vecs, axis=1, keepdims=True)
    unit = np.divide(vecs, norms, out=np.zeros_like(vecs), where=norms > 0)
    v = np.vstack([unit, np.zeros((1, vecs.shape[1]))])[t]  # (U, k, d); padding -> 0
    # Sum of cosine similarity over unordered pairs: (|sum v|^2 - sum |v|^2) / 2,
    # O(U k d) with no (U, k, k) intermediate.
    sq_sum = np.square(v.sum(axis=1)).sum(axis=1)
    self_sum = np.square(v).sum(axis=(1, 2))
    n = np.count_nonzero(valid, axis=1).astype(np.float64)
    pairs = n * (n - 1.0) / 2.0
    dist = np.clip(pairs - (sq_sum - self_sum) / 2.0, 0.0, 2.0 * pairs)
    return np.divide(dist, pairs, out=np.zeros_like(dist), where=pairs > 0)


def novelty(topk: np.ndarray, item_popularity: np.ndarray, *, min_prob: float = 1e-12) -> np.ndarray:
    """Per-list mean self-information -log2(p_i) over valid entries, float64 (U,).

    ``item_popularity[i]`` = p_i, the fraction of users who interacted with item
    i; p is clipped to ``>= min_prob`` to avoid log(0). Empty lists score 0.
    """
    pop = _scores(item_popularity, "item_popularity", 1).astype(np.float64)
    if pop.size and (pop.min() < 0 or pop.max() > 1):
        raise ValueError("item_popularity must lie in [0, 1]")
    if not min_prob > 0:
        raise ValueError(f"min_prob must be > 0, got {min_prob!r}")
    t, valid = _topk_lists(topk, pop.shape[0])
    info = np.append(-np.log2(np.maximum(pop, min_prob)), 0.0)  # padding -> 0
    total = info[t].sum(axis=1)
    n = np.count_nonzero(valid, axis=1).astype(np.float64)
    return np.divide(total, n, out=np.zeros_like(total), where=n > 0)


def _errors(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    p = np.asarray(pred, dtype=np.float64)
    t = np.asarray(true, dtype=np.float64)
    if p.shape != t.shape:
        raise ValueError(f"pred shape {p.shape} does not match true shape {t.shape}")
    if p.size == 0:
        raise ValueError("pred and true must be non-empty")
    return p - t


def rmse(pred: np.ndarray, true: np.ndarray) -> float:
    """Root mean squared error over all entries."""
    return float(np.sqrt(np.mean(np.square(_errors(pred, true)))))


def mae(pred: np.ndarray, true: np.ndarray) -> float:
    """Mean absolute error over all entries."""
    return float(np.mean(np.abs(_errors(pred, true))))
