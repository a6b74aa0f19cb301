"""Diversity and novelty re-ranking of per-user candidate pools (plain numpy, no torch).

Maximal marginal relevance (Carbonell & Goldstein, SIGIR 1998) over item-embedding
cosine similarity, with an optional popularity penalty for novelty. Greedily, the
next item of a user's list is::

    argmax_{i in pool \\ S}  (1 - λ)·rel(i) − λ·max_{j in S} sim(i, j) − β·pop(i)

- ``rel`` is the model score min-max normalised to [0, 1] within the user's pool,
  so λ does not depend on the scale of the logits;
- ``sim`` is the cosine similarity of item vectors (``model.item_representation()``),
  the same vectors the intra-list-diversity metric uses; the first pick has no
  similarity term;
- ``pop`` is :func:`popularity_prior` in [0, 1].

Guarantees: λ = 0 and β = 0 return the pool in its given order (plain top-K when
the pool is sorted by score); ties go to the earlier pool position, so results are
deterministic; padding (-1) is never picked; every output row is a list of
distinct pool items, padded with -1 when the pool runs out.
"""

from __future__ import annotations

import numpy as np

MAX_BLOCK = 8_000_000  # similarity entries per chunk of users (float32: 32 MB)


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (float32); zero rows stay zero (similarity 0 with everything)."""
    v = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    return np.divide(v, norms, out=np.zeros_like(v), where=norms > 0)


def popularity_prior(counts: np.ndarray) -> np.ndarray:
    """``log(1 + count) / log(1 + max count)`` per item, in [0, 1] (all zeros for an empty log)."""
    c = np.log1p(np.maximum(np.asarray(counts, dtype=np.float64), 0.0))
    top = c.max() if c.size else 0.0
    return c / top if top > 0 else np.zeros_like(c)


def pool_size(k: int, n_items: int) -> int:
    """Candidates re-ranked for a list of ``k``: ``max(k, min(5k, 2000), 100)``, at most the catalog."""
    return int(min(n_items, max(k, min(5 * k, 2000), 100)))


def mmr_rerank(
    pool_items: np.ndarray,
    pool_scores: np.ndarray,
    k: int,
    *,
    lam: float,
    unit_vectors: np.ndarray | None = None,
    popularity: np.ndarray | None = None,
    penalty: float = 0.0,
) -> np.ndarray:
    """Positions into the pool of each user's re-ranked top-``k``, (B, k) int64, -1 padded.

    ``pool_items`` (B, N) item indices (-1 = padding), ``pool_scores`` (B, N) model
    scores; ``unit_vectors`` (n_items, d) from :func:`unit_rows` (needed when λ > 0);
    ``popularity`` (n_items,) from :func:`popularity_prior` (needed when β > 0).
    """
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"diversity λ must lie in [0, 1], got {lam!r}")
    if penalty < 0 or not np.isfinite(penalty):
        raise ValueError(f"popularity penalty must be a finite number >= 0, got {penalty!r}")
    if lam > 0 and unit_vectors is None:
        raise ValueError("λ > 0 needs unit item vectors")
    if penalty > 0 and popularity is None:
        raise ValueError("a popularity penalty needs the item popularity")
    items = np.asarray(pool_items, dtype=np.int64)
    b, n = items.shape
    out = np.full((b, k), -1, np.int64)
    if b == 0 or n == 0:
        return out
    rows_per_block = max(1, MAX_BLOCK // (n * n)) if lam > 0 else b
    for s in range(0, b, rows_per_block):
        sl = slice(s, s + rows_per_block)
        out[sl] = _greedy(items[sl], np.asarray(pool_scores[sl], np.float64), k, lam, unit_vectors, popularity,
                          penalty)
    return out


def _relevance(items: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pool scores min-max normalised per row to [0, 1]; invalid entries -inf. Returns (rel, valid)."""
    valid = (items >= 0) & np.isfinite(scores)
    lo = np.where(valid, scores, np.inf).min(axis=1, keepdims=True)
    hi = np.where(valid, scores, -np.inf).max(axis=1, keepdims=True)
    span = hi - lo
    safe = np.where(np.isfinite(span) & (span > 0), span, 1.0)
    rel = np.where(valid, (np.where(valid, scores, 0.0) - np.where(np.isfinite(lo), lo, 0.0)) / safe, -np.inf)
    return rel, valid


def _greedy(items, scores, k, lam, unit_vectors, popularity, penalty) -> np.ndarray:
    b, n = items.shape
    rel, valid = _relevance(items, scores)
    base = np.where(valid, (1.0 - lam) * np.where(valid, rel, 0.0), -np.inf)
    if penalty > 0:
        base = base - penalty * np.where(valid, popularity[np.maximum(items, 0)], 0.0)
    sim = None
    if lam > 0:
        vec = unit_vectors[np.maximum(items, 0)]  # (b, n, d)
        sim = np.matmul(vec, vec.transpose(0, 2, 1)).astype(np.float64)  # (b, n, n)
    max_sim = np.zeros((b, n))
    taken = ~valid
    rows = np.arange(b)
    out = np.full((b, k), -1, np.int64)
    for t in range(min(k, n)):
        obj = base - lam * max_sim if t and sim is not None else base.copy()
        obj[taken] = -np.inf
        pick = obj.argmax(axis=1)  # first maximum: earliest pool position
        ok = np.isfinite(obj[rows, pick])
        if not ok.any():
            break
        out[ok, t] = pick[ok]
        taken[rows[ok], pick[ok]] = True
        if sim is not None:
            new = sim[rows, pick]  # (b, n)
            max_sim = np.where(ok[:, None], new if t == 0 else np.maximum(max_sim, new), max_sim)
    return out
