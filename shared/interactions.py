"""Indexed, in-memory interactions of one node (or of a whole dataset).

Users are rows ``0..n_users-1`` in sorted-pseudonym order; items are catalog
rows. Training interactions are a CSR matrix; each evaluated user has one
validation and one test item with sampled negatives (-1 = no item / padding).
This is what trainers, evaluators and recommenders consume: no raw ids, no
pandas, no Flower.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from shared import splits
from shared.errors import DataError
from shared.prepared_files import N_NEGATIVES

if TYPE_CHECKING:
    from shared.prepared import PreparedTables


@dataclass(frozen=True)
class InteractionData:
    """One node's data as index arrays."""

    user_ids: np.ndarray  # (U,) user pseudonyms, sorted
    n_items: int
    train_indptr: np.ndarray  # (U+1,)
    train_items: np.ndarray  # (nnz,) int64
    train_values: np.ndarray  # (nnz,) float32
    val_item: np.ndarray  # (U,) int64, -1 if none
    val_value: np.ndarray  # (U,) float32
    test_item: np.ndarray  # (U,)
    test_value: np.ndarray  # (U,)
    val_negatives: np.ndarray  # (U, 99) int64, -1 padding
    test_negatives: np.ndarray  # (U, 99)

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_train(self) -> int:
        return len(self.train_items)

    def train_counts(self) -> np.ndarray:
        """Training interactions per user."""
        return np.diff(self.train_indptr)

    def train_users(self) -> np.ndarray:
        """User row of every training interaction (aligned with ``train_items``)."""
        return np.repeat(np.arange(self.n_users), self.train_counts())

    def item_popularity(self) -> np.ndarray:
        """Training interaction count per catalog item."""
        return np.bincount(self.train_items, minlength=self.n_items).astype(np.float64)

    def held_out(self, role: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(users, items, negatives) of the users evaluated in ``role`` ('val' or 'test')."""
        item = self.val_item if role == splits.VAL else self.test_item
        negs = self.val_negatives if role == splits.VAL else self.test_negatives
        users = np.flatnonzero(item >= 0)
        return users, item[users], negs[users]

    def seen_for(self, role: str) -> tuple[np.ndarray, np.ndarray]:
        """CSR of items to exclude when ranking ``role``: train (+ val for test)."""
        if role == splits.VAL:
            return self.train_indptr, self.train_items
        extra = (self.val_item >= 0).astype(np.int64)
        counts = self.train_counts() + extra
        indptr = np.r_[0, np.cumsum(counts)]
        items = np.empty(indptr[-1], np.int64)
        pos = indptr[:-1].copy()
        rows = self.train_users()
        items[pos[rows] + (np.arange(self.n_train) - self.train_indptr[rows])] = self.train_items
        has = np.flatnonzero(extra)
        items[indptr[has + 1] - 1] = self.val_item[has]
        return indptr, items

    def subset(self, users: np.ndarray) -> InteractionData:
        """The data of the given user rows only (kept in the given order)."""
        users = np.asarray(users, dtype=np.int64)
        counts = self.train_counts()[users]
        indptr = np.r_[0, np.cumsum(counts)]
        take = np.concatenate([np.arange(self.train_indptr[u], self.train_indptr[u + 1]) for u in users]) if len(
            users
        ) else np.zeros(0, np.int64)
        return InteractionData(
            user_ids=self.user_ids[users],
            n_items=self.n_items,
            train_indptr=indptr,
            train_items=self.train_items[take],
            train_values=self.train_values[take],
            val_item=self.val_item[users],
            val_value=self.val_value[users],
            test_item=self.test_item[users],
            test_value=self.test_value[users],
            val_negatives=self.val_negatives[users],
            test_negatives=self.test_negatives[users],
        )

    @classmethod
    def from_tables(cls, tables: PreparedTables) -> InteractionData:
        """Index a prepared dataset (all of its users)."""
        import pandas as pd

        frame = tables.interactions
        catalog = tables.catalog
        user_codes, user_ids = pd.factorize(frame["user"], sort=True)
        items = catalog.index_of(frame["item"])
        if (items < 0).any():
            raise DataError("interaction with an item missing from the catalog", field="item")
        values = frame["value"].to_numpy(np.float32)
        split = frame["split"].to_numpy()
        n_users = len(user_ids)

        is_train = split == splits.TRAIN
        order = np.lexsort((items[is_train], user_codes[is_train]))
        tr_users = user_codes[is_train][order]
        indptr = np.r_[0, np.cumsum(np.bincount(tr_users, minlength=n_users))]

        def held(role: str) -> tuple[np.ndarray, np.ndarray]:
            item = np.full(n_users, -1, np.int64)
            value = np.zeros(n_users, np.float32)
            mask = split == role
            item[user_codes[mask]] = items[mask]
            value[user_codes[mask]] = values[mask]
            return item, value

        val_item, val_value = held(splits.VAL)
        test_item, test_value = held(splits.TEST)
        negs = {splits.VAL: np.full((n_users, N_NEGATIVES), -1, np.int64), splits.TEST: None}
        negs[splits.TEST] = negs[splits.VAL].copy()
        index = pd.Index(user_ids)
        for role, block in tables.negatives.groupby("role"):
            rows = index.get_indexer(block["user"])
            if (rows < 0).any():
                raise DataError("negatives name a user with no interactions", field="user")
            for row, lst in zip(rows, block["items"], strict=True):
                idx = catalog.index_of(list(lst))
                negs[role][row, : len(idx)] = idx
        return cls(
            user_ids=np.asarray(user_ids, dtype=object),
            n_items=len(catalog),
            train_indptr=indptr,
            train_items=items[is_train][order],
            train_values=values[is_train][order],
            val_item=val_item,
            val_value=val_value,
            test_item=test_item,
            test_value=test_value,
            val_negatives=negs[splits.VAL],
            test_negatives=negs[splits.TEST],
        )


@dataclass(frozen=True)
class NodeDataset:
    """What a node reads from its prepared directory: its index arrays, the value range, the catalog hash."""

    data: InteractionData
    value_range: tuple[float, float]
    catalog_hash: str
