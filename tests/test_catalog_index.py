"""The IVF approximate top-K: exact when every list is probed, never returns excluded items, high recall."""

from __future__ import annotations

import numpy as np
import pytest

from client.catalog_index import CatalogIndex
from shared import metrics


def catalog(n: int = 5000, d: int = 8, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(40, d))
    items = centres[rng.integers(0, 40, n)] + 0.3 * rng.normal(size=(n, d))
    return items.T.astype(np.float32), rng.normal(size=n).astype(np.float32)


def exact(matrix, offset, user, k, excluded=None):
    scores = (user @ matrix + offset)[None, :]
    ptr = None if excluded is None else np.array([0, len(excluded)])
    return metrics.top_k(scores, k, ptr, None if excluded is None else np.sort(excluded))[0]


def test_probing_every_list_is_exact_with_exclusion_and_exact_scores():
    matrix, offset = catalog()
    index = CatalogIndex.build(matrix, offset, lists=50, probes=50)
    rng = np.random.default_rng(0)
    for _ in range(20):
        user = rng.normal(size=matrix.shape[0]).astype(np.float32)
        excluded = rng.choice(matrix.shape[1], 30, replace=False)
        items, scores = index.top_k(user, 10, excluded)
        np.testing.assert_array_equal(items, exact(matrix, offset, user, 10, excluded))
        np.testing.assert_allclose(scores, (user @ matrix + offset)[items], rtol=1e-5, atol=1e-5)
        assert not set(items) & set(excluded)


def test_default_probes_find_most_of_the_exact_top_10():
    matrix, offset = catalog()
    index = CatalogIndex.build(matrix, offset)
    rng = np.random.default_rng(1)
    recall = []
    for _ in range(50):
        user = rng.normal(size=matrix.shape[0]).astype(np.float32)
        recall.append(len(set(index.top_k(user, 10)[0]) & set(exact(matrix, offset, user, 10))) / 10)
    assert np.mean(recall) > 0.8


def test_small_catalog_pads_and_rejects_nothing_it_should_return():
    matrix, offset = catalog(n=6)
    index = CatalogIndex.build(matrix, offset, lists=2, probes=2)
    items, scores = index.top_k(np.ones(matrix.shape[0], np.float32), 10, np.array([0]))
    assert sorted(items[items >= 0]) == [1, 2, 3, 4, 5]
    assert (items[5:] == -1).all() and np.isnan(scores[5:]).all()


def test_builds_are_deterministic():
    matrix, offset = catalog(n=800)
    a, b = CatalogIndex.build(matrix, offset), CatalogIndex.build(matrix, offset)
    np.testing.assert_array_equal(a.order, b.order)
    np.testing.assert_array_equal(a.centroids, b.centroids)


@pytest.mark.parametrize("lists", [1, 7])
def test_every_item_is_in_exactly_one_list(lists):
    matrix, offset = catalog(n=300)
    index = CatalogIndex.build(matrix, offset, lists=lists)
    np.testing.assert_array_equal(np.sort(index.order), np.arange(300))
    assert index.ptr[0] == 0 and index.ptr[-1] == 300
