"""The node's final recommendations: top-K per user from the global model and local user embeddings.

A :class:`NodeRecommender` is immutable once built: serving swaps whole
instances on a model reload, so a request always sees one consistent model.
Scoring is batched over users and vectorised over the catalog; GMF scores are a
single matrix product (``p_u · (q_i ∘ h) + b``), other models run one forward
per user block with the item embeddings looked up once.

Output stays pseudonymous (user and item pseudonyms); only the data owner can
map it back (``fedrec data reveal``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from client.catalog_index import CatalogIndex
from client.cold_start import DEFAULT_SETTINGS, ColdStartSettings, fit_cold_users
from client.diversity import mmr_rerank, pool_size, popularity_prior, unit_rows
from shared import metrics
from shared.config import RunConfig
from shared.interactions import InteractionData
from shared.models import Recommender, global_state
from shared.models.scoring import CatalogScorer

MAX_K = 1000
SCORE_BLOCK = 4_000_000  # scores per user block (float32: 16 MB)


@dataclass(frozen=True)
class Recommendations:
    """Per-user lists: ``items`` (B, k) catalog rows, -1 padded; ``scores`` (B, k) model logits, NaN padded."""

    items: np.ndarray
    scores: np.ndarray


def everything_seen(data: InteractionData) -> tuple[np.ndarray, np.ndarray]:
    """CSR of every item each user has on the node: train, validation and test items."""
    extra = np.stack([data.val_item, data.test_item], axis=1)
    counts = data.train_counts() + (extra >= 0).sum(axis=1)
    indptr = np.r_[0, np.cumsum(counts)].astype(np.int64)
    rows = np.concatenate([data.train_users(), np.repeat(np.arange(data.n_users), 2)])
    items = np.concatenate([data.train_items, extra.ravel()])
    keep = items >= 0
    order = np.argsort(rows[keep], kind="stable")
    return indptr, items[keep][order].astype(np.int64)


@dataclass(frozen=True, eq=False)
class NodeRecommender:
    """Everything needed to rank the catalog for this node's users (and for cold users)."""

    cfg: RunConfig
    model: Recommender
    user_ids: np.ndarray  # (U,) user pseudonyms, row order of the user tables
    item_ids: np.ndarray  # (n_items,) item pseudonyms, catalog order
    seen_indptr: np.ndarray  # CSR of the items to exclude per user
    seen_items: np.ndarray
    item_counts: np.ndarray  # (n_items,) interactions per item on this node (popularity penalty)
    version: str = ""
    cold: ColdStartSettings = DEFAULT_SETTINGS
    _derived: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.model.eval()
        self.model.requires_grad_(False)
        if len(self.item_ids) != self.model.n_items:
            raise ValueError(f"{len(self.item_ids)} catalog items but the model has {self.model.n_items}")
        self._derived.update(
            scorer=CatalogScorer(self.model),
            user_index={u: i for i, u in enumerate(self.user_ids)},
            item_index={p: i for i, p in enumerate(self.item_ids)},
            unit=unit_rows(self.model.item_representation().numpy()),
            popularity=popularity_prior(self.item_counts),
            global_part=global_state(self.model),
        )
        self._derived["scorer"].check()  # guards against model changes the fast path does not know

    @classmethod
    def build(cls, cfg: RunConfig, model: Recommender, data: InteractionData, item_ids, *, version: str = "",
              exclude: tuple[np.ndarray, np.ndarray] | None = None) -> NodeRecommender:
        """From a loaded model and the node's data; ``exclude`` defaults to :func:`everything_seen`."""
        indptr, items = exclude if exclude is not None else everything_seen(data)
        return cls(cfg, model, np.asarray(data.user_ids, dtype=object), np.asarray(item_ids, dtype=object),
                   np.asarray(indptr, np.int64), np.asarray(items, np.int64), data.item_popularity(), version)

    def with_exclusion(self, indptr: np.ndarray, items: np.ndarray) -> NodeRecommender:
        """The same model with another exclusion CSR (e.g. ``InteractionData.seen_for("test")``)."""
        return dataclasses.replace(self, seen_indptr=np.asarray(indptr, np.int64), seen_items=np.asarray(items))

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def unit_vectors(self) -> np.ndarray:
        """(n_items, D) unit-norm item vectors (MMR similarity, intra-list diversity)."""
        return self._derived["unit"]

    def user_row(self, pseudonym: str) -> int | None:
        """Row of a local user, or None if the node does not know the user."""
        return self._derived["user_index"].get(pseudonym)

    def item_row(self, pseudonym: str) -> int | None:
        """Catalog row of an item pseudonym, or None if it is not in the catalog."""
        return self._derived["item_index"].get(pseudonym)

    # ------------------------------------------------------------------------------------------------
    def recommend(self, users: np.ndarray, k: int = 10, *, exclude_seen: bool = True, diversity: float = 0.0,
                  popularity_penalty: float = 0.0, approximate: bool = False) -> Recommendations:
        """Top-``k`` for the given user rows (all users: ``np.arange(n_users)``).

        Excluded items never appear; rows run out (-1 padding) only when fewer
        than ``k`` items are left. Deterministic: ties go to the lower catalog row.
        ``approximate``: candidates from the IVF index (:mod:`client.catalog_index`, GMF only, no re-ranking);
        scores stay exact, an item outside the probed lists can be missed.
        """
        users = np.asarray(users, dtype=np.int64)
        _check(k, diversity, popularity_penalty)
        if users.size and (users.min() < 0 or users.max() >= self.n_users):
            raise ValueError(f"user rows must lie in [0, {self.n_users})")
        if approximate:
            return self._recommend_approximate(users, k, exclude_seen, diversity, popularity_penalty)
        items = np.full((len(users), k), -1, np.int64)
        scores = np.full((len(users), k), np.nan, np.float32)
        block = max(1, SCORE_BLOCK // max(self.n_items, 1))
        for s in range(0, len(users), block):
            rows = users[s : s + block]
            excl = _rows_csr(self.seen_indptr, self.seen_items, rows) if exclude_seen else None
            items[s : s + block], scores[s : s + block] = self._rank(
                self._derived["scorer"].rows(rows), excl, k, diversity, popularity_penalty)
        return Recommendations(items, scores)

    def catalog_index(self) -> CatalogIndex:
        """The IVF index of approximate top-K, built on first use (once per loaded model); ValueError if not GMF."""
        scorer = self._derived["scorer"]
        if scorer.gmf is None:
            raise ValueError("approximate top-K needs a GMF model")
        if "index" not in self._derived:  # a reload builds a new recommender, so a new index
            self._derived["index"] = CatalogIndex.build(scorer.gmf, scorer.offset)
        return self._derived["index"]

    def _recommend_approximate(self, users: np.ndarray, k: int, exclude_seen: bool, diversity: float,
                               penalty: float) -> Recommendations:
        if diversity or penalty:
            raise ValueError("approximate top-K ranks plain top-K: no diversity or popularity re-ranking")
        index = self.catalog_index()
        items = np.full((len(users), k), -1, np.int64)
        scores = np.full((len(users), k), np.nan, np.float32)
        vectors = self.model.user_emb["gmf"].weight.detach().numpy()
        for i, row in enumerate(users):
            seen = self.seen_items[self.seen_indptr[row] : self.seen_indptr[row + 1]] if exclude_seen else None
            items[i], scores[i] = index.top_k(vectors[row], k, seen)
        return Recommendations(items, scores)

    def recommend_cold(self, interactions: np.ndarray, k: int = 10, *, diversity: float = 0.0,
                       popularity_penalty: float = 0.0) -> Recommendations:
        """Top-``k`` for one unknown user given catalog rows they interacted with (excluded from the list)."""
        _check(k, diversity, popularity_penalty)
        rows = np.unique(np.asarray(interactions, dtype=np.int64))
        local = fit_cold_users(self.cfg, self._derived["global_part"], self.n_items, [rows], settings=self.cold)
        vecs = {key.split(".")[1]: v.unsqueeze(1) for key, v in local.items()}
        excl = (np.array([0, len(rows)], np.int64), rows)
        items, scores = self._rank(self._derived["scorer"](vecs), excl, k, diversity, popularity_penalty)
        return Recommendations(items, scores)

    def _rank(self, scores: np.ndarray, excl, k: int, lam: float, beta: float) -> tuple[np.ndarray, np.ndarray]:
        indptr, excluded = excl if excl is not None else (None, None)
        if lam == 0 and beta == 0:
            top = metrics.top_k(scores, k, indptr, excluded)
            return top, _gather(scores, top)
        pool = metrics.top_k(scores, pool_size(k, self.n_items), indptr, excluded)
        pool_scores = _gather(scores, pool)
        pos = mmr_rerank(pool, np.where(pool >= 0, pool_scores, -np.inf), k, lam=lam, unit_vectors=self.unit_vectors,
                         popularity=self._derived["popularity"], penalty=beta)
        top = np.where(pos >= 0, np.take_along_axis(pool, np.maximum(pos, 0), axis=1), -1)
        return top, _gather(scores, top)

    def to_columns(self, users: np.ndarray, recs: Recommendations) -> dict[str, np.ndarray]:
        """Long format: one row per (user, rank) with ``user``, ``rank`` (1-based), ``item``, ``score``."""
        users = np.asarray(users, dtype=np.int64)
        valid = recs.items >= 0
        row, col = np.nonzero(valid)
        return {
            "user": self.user_ids[users][row],
            "rank": (col + 1).astype(np.int64),
            "item": self.item_ids[recs.items[row, col]],
            "score": recs.scores[row, col].astype(np.float64),
        }


def _check(k: int, diversity: float, penalty: float) -> None:
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or not 1 <= k <= MAX_K:
        raise ValueError(f"k must be an integer in 1..{MAX_K}, got {k!r}")
    if not (np.isfinite(diversity) and 0.0 <= diversity <= 1.0):
        raise ValueError(f"diversity must lie in [0, 1], got {diversity!r}")
    if not (np.isfinite(penalty) and penalty >= 0.0):
        raise ValueError(f"popularity penalty must be a finite number >= 0, got {penalty!r}")


def _gather(scores: np.ndarray, top: np.ndarray) -> np.ndarray:
    picked = np.take_along_axis(scores, np.maximum(top, 0), axis=1).astype(np.float32)
    return np.where(top >= 0, picked, np.float32(np.nan))


def _rows_csr(indptr: np.ndarray, items: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    counts = indptr[rows + 1] - indptr[rows]
    sub = np.r_[0, np.cumsum(counts)].astype(np.int64)
    idx = np.repeat(indptr[rows] - sub[:-1], counts) + np.arange(sub[-1])
    return sub, items[idx]
