"""Evaluate a model on one node's held-out items, as additive sums.

Every figure is returned as a sum plus a count so that a federation can add the
sums of its nodes and divide once (exact, not an average of averages).

Ranking (implicit task), per evaluated user:
- sampled: the held-out item against its 99 sampled negatives;
- full-rank: against every catalog item the user has not interacted with
  before (train, plus the validation item when ranking the test item);
- beyond accuracy on the full-rank top-K: catalog coverage (a per-item bitmap,
  OR-ed across nodes), intra-list diversity and novelty (sums).
Rating (explicit task): squared and absolute error sums on the held-out ratings.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from shared import metrics
from shared.interactions import InteractionData
from shared.losses import PerSampleMSE
from shared.models.base import Recommender
from shared.models.scoring import CatalogScorer


@dataclass
class RankingSums:
    """Additive ranking statistics for one role (val or test)."""

    count: int = 0
    hr: float = 0.0
    ndcg: float = 0.0
    full_count: int = 0
    hr_full: float = 0.0
    ndcg_full: float = 0.0
    ild: float = 0.0
    novelty: float = 0.0
    recommended: np.ndarray | None = field(default=None, repr=False)  # bool (n_items,)

    def __add__(self, other: RankingSums) -> RankingSums:
        rec = self.recommended
        if other.recommended is not None:
            rec = other.recommended.copy() if rec is None else (rec | other.recommended)
        return RankingSums(
            self.count + other.count,
            self.hr + other.hr,
            self.ndcg + other.ndcg,
            self.full_count + other.full_count,
            self.hr_full + other.hr_full,
            self.ndcg_full + other.ndcg_full,
            self.ild + other.ild,
            self.novelty + other.novelty,
            rec,
        )

    def means(self, k: int = 10) -> dict[str, float]:
        """Averages keyed ``hr{k}``, ``ndcg{k}``, ``hr{k}_full``, ``ndcg{k}_full``, ``coverage{k}``…"""
        out = {f"hr{k}": _div(self.hr, self.count), f"ndcg{k}": _div(self.ndcg, self.count)}
        if self.full_count:
            out |= {
                f"hr{k}_full": _div(self.hr_full, self.full_count),
                f"ndcg{k}_full": _div(self.ndcg_full, self.full_count),
                f"ild{k}": _div(self.ild, self.full_count),
                f"novelty{k}": _div(self.novelty, self.full_count),
            }
            if self.recommended is not None:
                out[f"coverage{k}"] = float(self.recommended.mean())
        return out


@dataclass
class RatingSums:
    """Additive rating-error statistics."""

    count: int = 0
    sse: float = 0.0
    sae: float = 0.0

    def __add__(self, other: RatingSums) -> RatingSums:
        return RatingSums(self.count + other.count, self.sse + other.sse, self.sae + other.sae)

    def means(self) -> dict[str, float]:
        return {"rmse": float(np.sqrt(_div(self.sse, self.count))), "mae": _div(self.sae, self.count)}


PAIRS_PER_CHUNK = 8192  # (user, item) pairs scored at once: 60k NeuMF-32 pairs in one pass peaked at +67 MB


def _div(a: float, b: int) -> float:
    return float(a / b) if b else float("nan")


@torch.no_grad()
def score_pairs(model: torch.nn.Module, users: np.ndarray, items: np.ndarray, chunk: int | None = None) -> np.ndarray:
    """Logits for (users (n,), items (n, T)); -1 items score -inf.

    By default a chunk holds about 8k (user, item) pairs, as in :func:`score_all_items`.
    """
    model.eval()
    out = np.empty(items.shape, np.float32)
    chunk = chunk or max(1, PAIRS_PER_CHUNK // max(items.shape[1], 1))
    for s in range(0, len(users), chunk):
        it = items[s : s + chunk]
        logits = model(torch.from_numpy(users[s : s + chunk]), torch.from_numpy(np.maximum(it, 0)))
        out[s : s + chunk] = np.where(it >= 0, logits.numpy(), -np.inf)
    return out


@torch.no_grad()
def score_all_items(model: Recommender, users: np.ndarray, chunk: int | None = None
                    ) -> Iterator[tuple[slice, np.ndarray]]:
    """Yield (slice into ``users``, logits (c, n_items)) over the whole catalog (:class:`CatalogScorer`).

    By default a chunk holds about 8k (user, item) pairs (64k for GMF's dot product), which bounds the
    memory of the model's intermediate activations on edge devices.
    """
    model.eval()
    scorer = CatalogScorer(model)
    pairs = PAIRS_PER_CHUNK if scorer.gmf is None else 8 * PAIRS_PER_CHUNK  # a dot product keeps no activations
    chunk = chunk or max(1, pairs // max(model.n_items, 1))
    for s in range(0, len(users), chunk):
        rows = users[s : s + chunk]
        yield slice(s, s + len(rows)), scorer.rows(rows)


def sampled_ranks(model: torch.nn.Module, data: InteractionData, role: str) -> np.ndarray:
    """0-based rank of each ``role`` user's held-out item among its sampled negatives (users as in ``held_out``)."""
    users, pos, negs = data.held_out(role)
    if not len(users):
        return np.zeros(0, np.int64)
    scores = score_pairs(model, users, np.concatenate([pos[:, None], negs], axis=1))
    return metrics.sampled_ranks(scores[:, 0], scores[:, 1:], negs >= 0)


def evaluate_ranking(
    model: torch.nn.Module,
    data: InteractionData,
    role: str,
    *,
    k: int = 10,
    full_rank: bool = True,
    item_popularity: np.ndarray | None = None,
) -> RankingSums:
    """Ranking sums over ``data``'s users that have a ``role`` item.

    ``item_popularity`` (fraction of users per item) enables novelty; by default
    it is this node's training popularity.
    """
    users, pos, _ = data.held_out(role)
    sums = RankingSums(count=len(users))
    if not len(users):
        return sums
    ranks = sampled_ranks(model, data, role)
    sums.hr, sums.ndcg = float(metrics.hit_rate(ranks, k).sum()), float(metrics.ndcg(ranks, k).sum())
    if not full_rank:
        return sums
    indptr, seen = data.seen_for(role)
    pop = item_popularity if item_popularity is not None else data.item_popularity() / max(data.n_users, 1)
    item_vecs = model.item_representation().numpy()
    recommended = np.zeros(data.n_items, bool)
    for sl, block in score_all_items(model, users):
        rows = users[sl]
        sub_ptr, sub_items = _rows_csr(indptr, seen, rows)
        r = metrics.full_ranks(block, pos[sl], sub_ptr, sub_items)
        sums.hr_full += float(metrics.hit_rate(r, k).sum())
        sums.ndcg_full += float(metrics.ndcg(r, k).sum())
        top = metrics.top_k(block, k, sub_ptr, sub_items)
        recommended[top[top >= 0]] = True
        local, ids = _catalog_subset(top)  # ILD and novelty read only the listed items: O(k), not O(catalog)
        if ids.size:
            sums.ild += float(metrics.intra_list_diversity(local, item_vecs[ids]).sum())
            sums.novelty += float(metrics.novelty(local, pop[ids]).sum())
    sums.full_count = len(users)
    sums.recommended = recommended
    return sums


def _catalog_subset(top: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``top`` re-indexed into ``ids`` (the distinct catalog rows it lists, ascending); -1 padding kept."""
    valid = top >= 0
    ids, inverse = np.unique(top[valid], return_inverse=True)
    local = np.full_like(top, -1)
    local[valid] = inverse
    return local, ids


def evaluate_rating(
    model: torch.nn.Module, data: InteractionData, role: str, value_range: tuple[float, float]
) -> RatingSums:
    """Squared/absolute error sums of predicted ratings on the ``role`` items."""
    users, items, _ = data.held_out(role)
    if not len(users):
        return RatingSums()
    truth = (data.val_value if role == "val" else data.test_value)[users]
    logits = score_pairs(model, users, items[:, None])[:, 0]
    pred = PerSampleMSE(*value_range).predict(torch.from_numpy(logits)).numpy()
    err = pred - truth
    return RatingSums(len(users), float((err**2).sum()), float(np.abs(err).sum()))


def _rows_csr(indptr: np.ndarray, items: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sub-CSR of the given rows."""
    counts = indptr[rows + 1] - indptr[rows]
    sub_ptr = np.r_[0, np.cumsum(counts)]
    idx = np.repeat(indptr[rows] - sub_ptr[:-1], counts) + np.arange(sub_ptr[-1])
    return sub_ptr, items[idx]
