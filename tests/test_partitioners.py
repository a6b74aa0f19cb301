import numpy as np
import pytest

from shared.datasets import synthetic_tables
from shared.interactions import InteractionData
from simulations.partitioners import partition_users, taste_clusters


@pytest.fixture(scope="module")
def data():
    return InteractionData.from_tables(synthetic_tables(42, 300, 400))


def covers_each_user_once(parts, n):
    flat = np.concatenate(parts)
    return len(flat) == n and set(flat) == set(range(n))


def test_silos_are_balanced_disjoint_and_seeded(data):
    parts = partition_users(data, "silos", 7, seed=1)
    assert covers_each_user_once(parts, data.n_users)
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    again = partition_users(data, "silos", 7, seed=1)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))
    other = partition_users(data, "silos", 7, seed=2)
    assert not all(np.array_equal(a, b) for a, b in zip(parts, other, strict=True))


def test_user_per_node(data):
    parts = partition_users(data, "user-per-node", data.n_users, seed=0)
    assert all(len(p) == 1 for p in parts) and covers_each_user_once(parts, data.n_users)
    with pytest.raises(ValueError, match="one node per user"):
        partition_users(data, "user-per-node", 5, seed=0)


def test_dirichlet_is_non_iid_and_skew_grows_as_alpha_shrinks(data):
    labels = taste_clusters(data, 10, seed=0)

    def skew(alpha):
        parts = partition_users(data, "dirichlet", 6, seed=0, alpha=alpha)
        assert covers_each_user_once(parts, data.n_users) and all(len(p) for p in parts)
        # mean total-variation distance between a node's cluster mix and the global mix
        glob = np.bincount(labels, minlength=10) / len(labels)
        return np.mean([0.5 * np.abs(np.bincount(labels[p], minlength=10) / len(p) - glob).sum() for p in parts])

    assert skew(0.1) > skew(100.0) + 0.2
    iid = partition_users(data, "silos", 6, seed=0)
    glob = np.bincount(labels, minlength=10) / len(labels)
    iid_skew = np.mean([0.5 * np.abs(np.bincount(labels[p], minlength=10) / len(p) - glob).sum() for p in iid])
    assert skew(0.1) > iid_skew + 0.2
