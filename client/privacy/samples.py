"""Datasets whose samples are privacy units, for Opacus's Poisson-sampled data loader.

- :class:`UserSamples` (user-level DP): sample ``u`` is user ``u``'s training
  interactions — up to ``max_interactions`` of them drawn without replacement each
  time the user is sampled, each with ``k`` uniform negatives — padded to a fixed
  length with a 0/1 mask. Everything in a sample is that one user's data (negatives
  are data-independent), so per-sample clipping bounds each user's contribution.
- :class:`InteractionSamples` (interaction-level DP): sample ``j`` is one training
  interaction with ``k`` fresh negatives.

Batches are built vectorized by ``__getitems__`` (a tuple of tensors with a
leading batch dimension, possibly 0 for an empty Poisson batch), so the loader
uses :func:`identity_collate`. Randomness comes from the NumPy generator of the round's
:class:`~shared.secret_random.SecretRandomness` (subsampling a user's interactions is part of
the mechanism, so the coordinator must not be able to reproduce it).
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from client.trainer import NegativeSampler
from shared.interactions import InteractionData

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def identity_collate(batch: Batch) -> Batch:
    """The dataset already returns a collated batch."""
    return batch


class UserSamples(Dataset):
    """One sample per user: (users (B,), items (B, L*(1+k)), targets, mask)."""

    def __init__(self, data: InteractionData, *, max_interactions: int, k: int, rng: np.random.Generator) -> None:
        self.data, self.k, self.rng = data, k, rng
        self.sampler = NegativeSampler(data)
        self.length = int(min(max_interactions, max(int(data.train_counts().max(initial=1)), 1)))

    def __len__(self) -> int:
        return self.data.n_users

    def __getitem__(self, u: int) -> Batch:
        return tuple(t[0] for t in self.__getitems__([u]))  # type: ignore[return-value]

    def __getitems__(self, users: list[int]) -> Batch:
        d, L, k = self.data, self.length, self.k
        users_arr = np.asarray(users, dtype=np.int64)
        items = np.zeros((len(users_arr), L, 1 + k), np.int64)
        mask = np.zeros((len(users_arr), L, 1 + k), np.float32)
        rows, cols = [], []
        for b, u in enumerate(users_arr):
            own = d.train_items[d.train_indptr[u] : d.train_indptr[u + 1]]
            if len(own) > L:
                own = self.rng.choice(own, size=L, replace=False)
            items[b, : len(own), 0] = own
            mask[b, : len(own)] = 1.0
            rows.append(np.full(len(own), b))
            cols.append(np.arange(len(own)))
        if rows:
            r, c = np.concatenate(rows), np.concatenate(cols)
            items[r, c, 1:] = self.sampler(users_arr[r], k, self.rng)
        targets = np.zeros_like(mask)
        targets[:, :, 0] = mask[:, :, 0]
        n, t = len(users_arr), L * (1 + k)  # explicit width: an empty Poisson batch has n = 0
        return (torch.from_numpy(users_arr), torch.from_numpy(items.reshape(n, t)),
                torch.from_numpy(targets.reshape(n, t)), torch.from_numpy(mask.reshape(n, t)))


class InteractionSamples(Dataset):
    """One sample per training interaction: (users (B,), items (B, 1+k), targets, mask)."""

    def __init__(self, data: InteractionData, *, k: int, rng: np.random.Generator) -> None:
        self.data, self.k, self.rng = data, k, rng
        self.users = data.train_users()
        self.sampler = NegativeSampler(data)

    def __len__(self) -> int:
        return self.data.n_train

    def __getitem__(self, j: int) -> Batch:
        return tuple(t[0] for t in self.__getitems__([j]))  # type: ignore[return-value]

    def __getitems__(self, idx: list[int]) -> Batch:
        idx_arr = np.asarray(idx, dtype=np.int64)
        users = self.users[idx_arr]
        items = np.concatenate([self.data.train_items[idx_arr, None], self.sampler(users, self.k, self.rng)], axis=1)
        targets = np.zeros(items.shape, np.float32)
        targets[:, 0] = 1.0
        return (torch.from_numpy(users), torch.from_numpy(items), torch.from_numpy(targets),
                torch.ones(items.shape, dtype=torch.float32))
