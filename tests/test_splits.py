import numpy as np
import pandas as pd
import pytest

from shared import splits
from shared.datasets import synthetic_tables
from shared.errors import DataError
from shared.interactions import InteractionData


def frame(rows):
    return pd.DataFrame(rows, columns=["user", "item", "timestamp", "line"]).astype({"timestamp": "Int64"})


def test_latest_is_test_second_latest_is_validation():
    f = frame([("a", "x", 30, 1), ("a", "y", 10, 2), ("a", "z", 20, 3), ("a", "w", 5, 4),
               ("b", "x", 1, 5), ("b", "y", 2, 6)])  # b has < 3 interactions: train only
    labels = splits.leave_latest_out(f, seed=0)
    assert list(labels) == ["test", "train", "val", "train", "train", "train"]


def test_ties_and_missing_timestamps_are_broken_deterministically_by_seed():
    f = frame([("a", str(i), None, i + 1) for i in range(20)])
    a = splits.leave_latest_out(f, seed=1)
    assert (a == "test").sum() == 1 and (a == "val").sum() == 1
    assert a.equals(splits.leave_latest_out(f, seed=1))
    assert any(not splits.leave_latest_out(f, seed=s).equals(a) for s in range(2, 8))


def test_fixed_test_pairs_are_used_and_validated():
    f = frame([("a", "x", None, 1), ("a", "y", None, 2), ("a", "z", None, 3), ("b", "x", None, 4)])
    fixed = pd.DataFrame({"user": ["a"], "item": ["y"], "line": [1]})
    labels = splits.leave_latest_out(f, seed=0, fixed_test=fixed)
    assert labels.iloc[1] == "test" and (labels == "val").sum() == 1 and labels.iloc[3] == "train"
    with pytest.raises(DataError) as err:
        splits.leave_latest_out(f, seed=0, fixed_test=pd.DataFrame({"user": ["b"], "item": ["q"], "line": [7]}))
    assert err.value.line == 7


def test_sampled_negatives_are_unseen_distinct_and_seeded():
    indptr = np.array([0, 3, 5])
    seen = np.array([0, 1, 2, 4, 5])
    a = splits.sample_negatives(indptr, seen, np.array([0, 1]), 10, 5, seed=3, stream=0)
    assert a.shape == (2, 5)
    assert not set(a[0]) & {0, 1, 2} and not set(a[1]) & {4, 5}
    assert all(len(set(row)) == 5 for row in a)
    assert np.array_equal(a, splits.sample_negatives(indptr, seen, np.array([0, 1]), 10, 5, seed=3, stream=0))
    # fewer unseen items than asked: pad with -1
    short = splits.sample_negatives(np.array([0, 8]), np.arange(8), np.array([0]), 10, 5, seed=0, stream=0)
    assert sorted(short[0]) == [-1, -1, -1, 8, 9]


def test_prepared_synthetic_split_invariants():
    data = InteractionData.from_tables(synthetic_tables(42, 200, 300))
    for role in (splits.VAL, splits.TEST):
        users, items, negs = data.held_out(role)
        assert len(users) == data.n_users  # every synthetic user has >= 20 interactions
        indptr, seen = data.seen_for(role)
        for u, pos, row in zip(users, items, negs, strict=True):
            user_items = set(data.train_items[data.train_indptr[u] : data.train_indptr[u + 1]])
            assert pos not in user_items
            assert not (set(row) & user_items) and pos not in set(row)
            assert (row >= 0).sum() == 99
            assert set(seen[indptr[u] : indptr[u + 1]]) == (
                user_items if role == splits.VAL else user_items | {data.val_item[u]})
