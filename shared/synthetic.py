"""The embedded default dataset: deterministic synthetic behaviour logs.

Structure, chosen to look like MovieLens-100K (943 users, 1682 items, ~100k
interactions, every user >= 20 interactions):

- latent tastes: users and items get ``dim``-dimensional factors drawn around
  ``n_genres`` cluster centres (an item's cluster is its public "genre");
- power-law popularity: item ``i`` has weight ``rank(i)^-zipf`` (Zipf-like);
- activity spread: per-user interaction counts are log-normal, clipped to
  ``[min_per_user, n_items // 2]``;
- choice model: each user picks items without replacement with probability
  proportional to ``pop_i * exp(affinity * <u, v_i>)`` (Gumbel top-k);
- timestamps: each user is active over a random window within 1997-2003;
  the order of a user's choices is random, so the latest item is a fair
  held-out sample of the user's taste;
- ratings 1..5 grow with the user-item affinity plus noise.

Everything derives from ``numpy.random.default_rng(seed)``; the same seed gives
byte-identical output.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from shared import schema

T_START = 852_076_800  # 1997-01-01
T_END = 1_046_476_800  # 2003-03-01


@dataclass(frozen=True)
class SyntheticSpec:
    """Knobs of the generator; the defaults mimic MovieLens-100K."""

    n_users: int = 943
    n_items: int = 1682
    dim: int = 8
    n_genres: int = 12
    zipf: float = 0.9
    affinity: float = 2.0
    mean_per_user: float = 106.0
    min_per_user: int = 20
    seed: int = 42


@dataclass(frozen=True)
class SyntheticData:
    """Raw interactions (schema frame) plus the generator's ground truth."""

    interactions: pd.DataFrame
    user_factors: np.ndarray
    item_factors: np.ndarray
    item_genre: np.ndarray  # (n_items,) public metadata: the item's cluster
    genre_names: tuple[str, ...]


def generate(spec: SyntheticSpec = SyntheticSpec()) -> SyntheticData:
    """Generate the dataset described by ``spec`` (deterministic in ``spec.seed``)."""
    if spec.n_users < 1 or spec.n_items < 2 * spec.min_per_user:
        raise ValueError("need n_users >= 1 and n_items >= 2 * min_per_user")
    rng = np.random.default_rng(spec.seed)
    centres = rng.normal(0.0, 1.0, size=(spec.n_genres, spec.dim))
    user_genre = rng.integers(0, spec.n_genres, size=spec.n_users)
    item_genre = rng.integers(0, spec.n_genres, size=spec.n_items)
    users = centres[user_genre] + rng.normal(0.0, 0.6, size=(spec.n_users, spec.dim))
    items = centres[item_genre] + rng.normal(0.0, 0.6, size=(spec.n_items, spec.dim))
    users /= np.linalg.norm(users, axis=1, keepdims=True)
    items /= np.linalg.norm(items, axis=1, keepdims=True)

    log_pop = -spec.zipf * np.log1p(rng.permutation(spec.n_items)).astype(np.float64)

    sigma = 0.9
    mu = np.log(max(spec.mean_per_user - spec.min_per_user, 1.0)) - sigma**2 / 2
    counts = spec.min_per_user + np.floor(rng.lognormal(mu, sigma, size=spec.n_users)).astype(np.int64)
    counts = np.minimum(counts, spec.n_items // 2)

    rows_u, rows_i, rows_r, rows_t = [], [], [], []
    chunk = max(1, 2_000_000 // spec.n_items)
    for start in range(0, spec.n_users, chunk):
        stop = min(start + chunk, spec.n_users)
        aff = users[start:stop] @ items.T  # cosine affinity in [-1, 1]
        logits = log_pop[None, :] + spec.affinity * 4.0 * aff
        keys = logits + rng.gumbel(size=logits.shape)
        order = np.argsort(-keys, axis=1, kind="stable")
        for row, u in enumerate(range(start, stop)):
            chosen = order[row, : counts[u]]
            chosen = chosen[rng.permutation(len(chosen))]
            a = aff[row, chosen]
            z = (a - a.mean()) / (a.std() + 1e-9)
            rating = np.clip(np.rint(3.5 + 0.9 * z + rng.normal(0.0, 0.7, size=len(chosen))), 1, 5)
            t0 = rng.integers(T_START, T_END - 86_400 * 30)
            span = rng.integers(3_600, min(T_END - t0, 86_400 * 400))
            stamps = np.sort(t0 + rng.integers(0, span, size=len(chosen)))
            rows_u.append(np.full(len(chosen), u + 1))
            rows_i.append(chosen + 1)
            rows_r.append(rating)
            rows_t.append(stamps)

    u = np.concatenate(rows_u)
    frame = pd.DataFrame(
        {
            schema.USER: u.astype(str).astype(object),
            schema.ITEM: np.concatenate(rows_i).astype(str).astype(object),
            schema.VALUE: np.concatenate(rows_r).astype(np.float64),
            schema.TIMESTAMP: pd.array(np.concatenate(rows_t), dtype="Int64"),
            schema.LINE: np.arange(1, len(u) + 1, dtype=np.int64),
        }
    )
    genre_names = tuple(f"genre-{g:02d}" for g in range(spec.n_genres))
    return SyntheticData(frame, users, items, item_genre, genre_names)
