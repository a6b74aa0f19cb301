"""Split one dataset's users over simulated nodes (each user wholly on one node).

- ``silos``: users shuffled (seeded) and cut into ``n`` near-equal parts (cross-silo, IID).
- ``user-per-node``: node ``i`` holds user ``i`` only (cross-device); ``n`` must equal the user count.
- ``dirichlet``: non-IID. Users are clustered by taste (k-means on a truncated SVD of the
  training user-item matrix); each cluster's users are spread over the nodes with
  proportions drawn from Dirichlet(alpha) — small alpha, strongly skewed nodes
  (the label-skew scheme of Hsu et al. 2019, with taste clusters as labels).
"""

from __future__ import annotations

import numpy as np

from shared.interactions import InteractionData
from shared.seeding import numpy_rng

SCHEMES = ("silos", "user-per-node", "dirichlet")


def partition_users(
    data: InteractionData, scheme: str, n: int, *, seed: int, alpha: float = 0.5, n_clusters: int = 10
) -> list[np.ndarray]:
    """User rows of each of the ``n`` partitions (sorted; every user in exactly one)."""
    if n < 1:
        raise ValueError("need at least one partition")
    if scheme == "silos":
        if n > data.n_users:
            raise ValueError(f"{n} silos but only {data.n_users} users")
        perm = numpy_rng(seed, "partition", "silos").permutation(data.n_users)
        return [np.sort(part) for part in np.array_split(perm, n)]
    if scheme == "user-per-node":
        if n != data.n_users:
            raise ValueError(f"user-per-node needs one node per user: {data.n_users} nodes, got {n}")
        return [np.array([u]) for u in range(n)]
    if scheme == "dirichlet":
        return _dirichlet(data, n, seed=seed, alpha=alpha, n_clusters=n_clusters)
    raise ValueError(f"unknown partitioner {scheme!r} (one of {', '.join(SCHEMES)})")


def taste_clusters(data: InteractionData, k: int, *, seed: int, rank: int = 16, iters: int = 25) -> np.ndarray:
    """Cluster id per user: k-means (k-means++ init) on the top-``rank`` left singular vectors."""
    rng = numpy_rng(seed, "partition", "kmeans")
    matrix = np.zeros((data.n_users, data.n_items), np.float32)
    matrix[data.train_users(), data.train_items] = 1.0
    matrix /= np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-9)
    u, s, _ = np.linalg.svd(matrix, full_matrices=False)
    x = u[:, : min(rank, u.shape[1])] * s[: min(rank, len(s))]
    k = min(k, data.n_users)
    centres = [x[rng.integers(len(x))]]
    for _ in range(1, k):
        d2 = np.min([((x - c) ** 2).sum(1) for c in centres], axis=0)
        centres.append(x[rng.choice(len(x), p=d2 / d2.sum())] if d2.sum() > 0 else x[rng.integers(len(x))])
    c = np.stack(centres)
    for _ in range(iters):
        labels = np.argmin(((x[:, None, :] - c[None]) ** 2).sum(-1), axis=1)
        c = np.stack([x[labels == j].mean(0) if (labels == j).any() else c[j] for j in range(k)])
    return np.argmin(((x[:, None, :] - c[None]) ** 2).sum(-1), axis=1)


def _dirichlet(data: InteractionData, n: int, *, seed: int, alpha: float, n_clusters: int) -> list[np.ndarray]:
    if n > data.n_users:
        raise ValueError(f"{n} nodes but only {data.n_users} users")
    labels = taste_clusters(data, n_clusters, seed=seed)
    rng = numpy_rng(seed, "partition", "dirichlet")
    owner = np.empty(data.n_users, np.int64)
    for cluster in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == cluster))
        share = rng.dirichlet(np.full(n, alpha))
        cuts = (np.cumsum(share)[:-1] * len(members)).astype(int)
        for node, part in enumerate(np.split(members, cuts)):
            owner[part] = node
    # every node needs at least one user: move users from the largest nodes to empty ones
    for node in range(n):
        if not (owner == node).any():
            counts = np.bincount(owner, minlength=n)
            donor = int(np.argmax(counts))
            owner[np.flatnonzero(owner == donor)[0]] = node
    return [np.flatnonzero(owner == node) for node in range(n)]
