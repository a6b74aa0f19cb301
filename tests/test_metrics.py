"""Tests for shared.metrics: hand-computed golden values plus brute-force properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.metrics import (
    catalog_coverage,
    full_ranks,
    hit_rate,
    intra_list_diversity,
    mae,
    mask_excluded,
    ndcg,
    novelty,
    rmse,
    sampled_ranks,
    top_k,
)


def csr(rows: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Build (indptr, indices) from per-user item lists."""
    indptr = np.concatenate([[0], np.cumsum([len(r) for r in rows])]).astype(np.int64)
    indices = np.array([i for r in rows for i in r], dtype=np.int64)
    return indptr, indices


# ----------------------------------------------------------------------------- hit rate / ndcg


def test_hit_rate_and_ndcg_golden() -> None:
    ranks = np.array([0, 3, 12])
    # rank < 10 -> hit: [1, 1, 0]
    np.testing.assert_array_equal(hit_rate(ranks, 10), [1.0, 1.0, 0.0])
    # 1/log2(0+2) = 1, 1/log2(3+2) = 1/log2(5) ~= 0.4307, rank 12 >= 10 -> 0
    np.testing.assert_allclose(ndcg(ranks, 10), [1.0, 1.0 / math.log2(5), 0.0])
    assert hit_rate(ranks, 10).dtype == np.float64
    assert ndcg(ranks, 10).dtype == np.float64


def test_hit_rate_and_ndcg_cutoff_boundary() -> None:
    ranks = np.array([1, 9, 10])
    # k=10: rank 9 is the last hit, rank 10 misses
    np.testing.assert_array_equal(hit_rate(ranks, 10), [1.0, 1.0, 0.0])
    # 1/log2(3) ~= 0.6309, 1/log2(11) ~= 0.2891, 0
    np.testing.assert_allclose(ndcg(ranks, 10), [1 / math.log2(3), 1 / math.log2(11), 0.0])
    # k=1: only rank 0 counts
    np.testing.assert_array_equal(hit_rate(np.array([0, 1]), 1), [1.0, 0.0])
    np.testing.assert_array_equal(ndcg(np.array([0, 1]), 1), [1.0, 0.0])


@pytest.mark.parametrize("k", [0, -1, 2.5, True])
def test_bad_k_rejected(k: object) -> None:
    with pytest.raises(ValueError, match="k must be a positive integer"):
        hit_rate(np.array([0]), k)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="k must be a positive integer"):
        ndcg(np.array([0]), k)  # type: ignore[arg-type]


def test_negative_ranks_rejected() -> None:
    with pytest.raises(ValueError, match="non-negative"):
        hit_rate(np.array([0, -1]), 10)
    with pytest.raises(ValueError, match="non-negative"):
        ndcg(np.array([np.nan]), 10)


# ----------------------------------------------------------------------------- sampled ranks


def test_sampled_ranks_golden() -> None:
    pos = np.array([0.5, 0.5, 0.95])
    neg = np.array([[0.1, 0.5, 0.9], [0.6, 0.7, 0.2], [0.1, 0.2, 0.3]])
    # user 0: 0.5 (tie, counts against) and 0.9 -> 2
    # user 1: 0.6 and 0.7 -> 2; user 2: nothing >= 0.95 -> 0
    r = sampled_ranks(pos, neg)
    np.testing.assert_array_equal(r, [2, 2, 0])
    assert r.dtype == np.int64


def test_sampled_ranks_constant_model_is_worst() -> None:
    # 1 positive + 4 negatives, all scoring 1.0 -> rank = 5 candidates - 1 = 4
    r = sampled_ranks(np.ones(3), np.ones((3, 4)))
    np.testing.assert_array_equal(r, [4, 4, 4])
    np.testing.assert_array_equal(hit_rate(r, 4), [0.0, 0.0, 0.0])


def test_sampled_ranks_valid_mask() -> None:
    pos = np.array([0.5, 0.5])
    neg = np.array([[0.9, 0.8, 0.1], [0.9, 0.9, 0.9]])
    valid = np.array([[True, False, True], [False, False, False]])
    # user 0: 0.9 counts, 0.8 is padding, 0.1 is below -> 1; user 1: all padding -> 0
    np.testing.assert_array_equal(sampled_ranks(pos, neg, valid), [1, 0])


def test_sampled_ranks_no_negatives() -> None:
    np.testing.assert_array_equal(sampled_ranks(np.zeros(2), np.zeros((2, 0))), [0, 0])


def test_sampled_ranks_validation() -> None:
    with pytest.raises(ValueError, match="rows"):
        sampled_ranks(np.zeros(2), np.zeros((3, 4)))
    with pytest.raises(ValueError, match="2-D"):
        sampled_ranks(np.zeros(2), np.zeros(2))
    with pytest.raises(ValueError, match="valid"):
        sampled_ranks(np.zeros(2), np.zeros((2, 4)), np.ones((2, 3), dtype=bool))
    with pytest.raises(ValueError, match="valid"):
        sampled_ranks(np.zeros(2), np.zeros((2, 4)), np.ones((2, 4)))
    with pytest.raises(ValueError, match="NaN"):
        sampled_ranks(np.zeros(2), np.array([[0.0, np.nan], [0.0, 0.0]]))


# ----------------------------------------------------------------------------- full ranks

SCORES = np.array(
    [
        [0.9, 0.5, 0.7, 0.5, 0.1],
        [0.2, 0.8, 0.4, 0.6, 0.0],
    ]
)
POSITIVES = np.array([1, 2])


def test_full_ranks_no_exclusion() -> None:
    # user 0: positive item 1 (0.5); items 0 (0.9), 2 (0.7), 3 (0.5, tie) -> 3
    # user 1: positive item 2 (0.4); items 1 (0.8), 3 (0.6) -> 2
    r = full_ranks(SCORES, POSITIVES, *csr([[], []]))
    np.testing.assert_array_equal(r, [3, 2])
    assert r.dtype == np.int64


def test_full_ranks_exclusion_is_per_user() -> None:
    # user 0 excludes 0 and 2 (both outscore the positive) -> only item 3 remains -> 1
    # user 1 excludes 1 (0.8) -> only item 3 remains -> 1
    r = full_ranks(SCORES, POSITIVES, *csr([[0, 2], [1]]))
    np.testing.assert_array_equal(r, [1, 1])
    # excluding low-scoring items changes nothing: user 0 drops 4, user 1 drops 0 and 4
    r = full_ranks(SCORES, POSITIVES, *csr([[4], [0, 4]]))
    np.testing.assert_array_equal(r, [3, 2])


def test_full_ranks_positive_listed_in_exclusion_still_ranks() -> None:
    # same as the exclusion test, with the positive (and a duplicate) also listed
    r = full_ranks(SCORES, POSITIVES, *csr([[0, 1, 2, 0], [2, 1, 1]]))
    np.testing.assert_array_equal(r, [1, 1])


def test_full_ranks_constant_model_is_worst() -> None:
    scores = np.full((2, 6), 0.3)
    # 6 candidates -> rank 5; with 2 excluded -> 4 candidates -> rank 3
    r = full_ranks(scores, np.array([0, 5]), *csr([[], [1, 2]]))
    np.testing.assert_array_equal(r, [5, 3])


def test_full_ranks_validation() -> None:
    with pytest.raises(ValueError, match="positives has length"):
        full_ranks(SCORES, np.array([1]), *csr([[], []]))
    with pytest.raises(ValueError, match="positives must lie"):
        full_ranks(SCORES, np.array([1, 5]), *csr([[], []]))
    with pytest.raises(ValueError, match="n_users \\+ 1"):
        full_ranks(SCORES, POSITIVES, *csr([[]]))
    with pytest.raises(ValueError, match="exclude_indices must lie"):
        full_ranks(SCORES, POSITIVES, *csr([[5], []]))
    with pytest.raises(ValueError, match="non-decreasing"):
        full_ranks(SCORES, POSITIVES, np.array([0, 2, 1]), np.array([0, 1]))
    with pytest.raises(ValueError, match="integer"):
        full_ranks(SCORES, np.array([1.0, 2.0]), *csr([[], []]))
    with pytest.raises(ValueError, match="NaN"):
        full_ranks(np.array([[0.0, np.nan]]), np.array([0]), *csr([[]]))


# ----------------------------------------------------------------------------- mask_excluded


def test_mask_excluded() -> None:
    scores = np.array([[1, 2, 3], [4, 5, 6]])
    out = mask_excluded(scores, *csr([[0, 2], [1]]))
    np.testing.assert_array_equal(out, [[-np.inf, 2, -np.inf], [4, -np.inf, 6]])
    assert out.dtype == np.float64  # int input promoted so -inf fits
    np.testing.assert_array_equal(scores, [[1, 2, 3], [4, 5, 6]])  # input untouched
    f32 = np.zeros((1, 3), dtype=np.float32)
    out = mask_excluded(f32, *csr([[1]]))
    assert out.dtype == np.float32 and f32[0, 1] == 0.0


# ----------------------------------------------------------------------------- top_k


def test_top_k_golden_and_tie_break() -> None:
    scores = np.array([[0.3, 0.9, 0.3, 0.5, 0.3]])
    # descending: 1 (0.9), 3 (0.5), then the 0.3 tie in index order 0, 2, 4
    np.testing.assert_array_equal(top_k(scores, 3), [[1, 3, 0]])
    np.testing.assert_array_equal(top_k(scores, 4), [[1, 3, 0, 2]])
    np.testing.assert_array_equal(top_k(scores, 1), [[1]])
    # k > n_items pads with -1
    np.testing.assert_array_equal(top_k(scores, 7), [[1, 3, 0, 2, 4, -1, -1]])
    assert top_k(scores, 3).dtype == np.int64


def test_top_k_constant_scores() -> None:
    np.testing.assert_array_equal(top_k(np.ones((2, 5)), 2), [[0, 1], [0, 1]])
    np.testing.assert_array_equal(top_k(np.ones((2, 5)), 2, *csr([[0], [1, 0]])), [[1, 2], [2, 3]])


def test_top_k_exclusion_and_padding() -> None:
    scores = np.array([[0.3, 0.9, 0.3, 0.5, 0.3], [0.3, 0.9, 0.3, 0.5, 0.3]])
    # user 0 excludes item 3 -> [1, 0, 2]; user 1 keeps only item 4 -> [4, -1, -1]
    out = top_k(scores, 3, *csr([[3], [0, 1, 2, 3]]))
    np.testing.assert_array_equal(out, [[1, 0, 2], [4, -1, -1]])


def test_top_k_excluded_never_beats_real_minus_inf() -> None:
    # item 1 is a real candidate scoring -inf; excluded item 0 must not take its slot
    scores = np.array([[0.0, -np.inf, 1.0]])
    np.testing.assert_array_equal(top_k(scores, 3, *csr([[0]])), [[2, 1, -1]])


def test_top_k_validation() -> None:
    with pytest.raises(ValueError, match="together"):
        top_k(np.zeros((1, 3)), 2, exclude_indptr=np.array([0, 0]))
    with pytest.raises(ValueError, match="k must be"):
        top_k(np.zeros((1, 3)), 0)
    with pytest.raises(ValueError, match="2-D"):
        top_k(np.zeros(3), 2)


# ----------------------------------------------------------------------------- beyond accuracy


def test_catalog_coverage() -> None:
    # distinct {0, 1, 2} out of 10 items -> 0.3
    assert catalog_coverage(np.array([[0, 1, -1], [1, 2, -1]]), 10) == pytest.approx(0.3)
    assert catalog_coverage(np.full((2, 3), -1), 10) == 0.0
    assert catalog_coverage(np.array([[0, 1], [2, 3]]), 4) == 1.0
    with pytest.raises(ValueError, match="topk entries"):
        catalog_coverage(np.array([[0, 10]]), 10)
    with pytest.raises(ValueError, match="n_items"):
        catalog_coverage(np.array([[0]]), 0)


VECTORS = np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 0.0], [-1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])


def test_intra_list_diversity_golden() -> None:
    topk = np.array(
        [
            [0, 1, -1],  # orthogonal -> 1.0
            [0, 2, -1],  # same direction, different length -> 0.0
            [0, 3, -1],  # opposite -> 2.0
            [0, 1, 2],  # pairs (0,1)=1, (0,2)=0, (1,2)=1 -> 2/3
            [0, 4, -1],  # 45 degrees -> 1 - 1/sqrt(2)
            [-1, 0, 1],  # padding anywhere is ignored -> 1.0
            [0, -1, -1],  # one item -> 0
            [-1, -1, -1],  # empty -> 0
            [0, 5, -1],  # zero vector: similarity 0 -> 1.0
        ]
    )
    expected = [1.0, 0.0, 2.0, 2 / 3, 1 - 1 / math.sqrt(2), 1.0, 0.0, 0.0, 1.0]
    out = intra_list_diversity(topk, VECTORS)
    np.testing.assert_allclose(out, expected, atol=1e-12)
    assert out.dtype == np.float64


def test_intra_list_diversity_validation() -> None:
    with pytest.raises(ValueError, match="topk entries"):
        intra_list_diversity(np.array([[0, 6]]), VECTORS)
    with pytest.raises(ValueError, match="finite"):
        intra_list_diversity(np.array([[0, 1]]), np.array([[np.inf, 0.0], [0.0, 1.0]]))


def test_novelty_golden() -> None:
    pop = np.array([0.5, 0.25, 0.0, 1.0, 0.125])
    topk = np.array(
        [
            [0, 1, -1],  # (-log2 .5 + -log2 .25) / 2 = (1 + 2) / 2 = 1.5
            [3, -1, -1],  # -log2 1 = 0
            [4, 0, 1],  # (3 + 1 + 2) / 3 = 2
            [2, -1, -1],  # p = 0 clipped to 1e-12 -> 12 * log2(10) ~= 39.863
            [-1, -1, -1],  # empty -> 0
        ]
    )
    out = novelty(topk, pop)
    np.testing.assert_allclose(out, [1.5, 0.0, 2.0, 12 * math.log2(10), 0.0])
    assert out.dtype == np.float64
    # a larger floor: -log2(0.01) ~= 6.6439
    np.testing.assert_allclose(novelty(np.array([[2]]), pop, min_prob=0.01), [-math.log2(0.01)])


def test_novelty_validation() -> None:
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        novelty(np.array([[0]]), np.array([1.5]))
    with pytest.raises(ValueError, match="min_prob"):
        novelty(np.array([[0]]), np.array([0.5]), min_prob=0.0)
    with pytest.raises(ValueError, match="topk entries"):
        novelty(np.array([[1]]), np.array([0.5]))


# ----------------------------------------------------------------------------- rating errors


def test_rmse_mae_golden() -> None:
    pred, true = np.array([1.0, 2.0, 3.0]), np.array([1.0, 4.0, 0.0])
    # errors 0, -2, 3: MSE = (0 + 4 + 9) / 3 = 13/3; MAE = (0 + 2 + 3) / 3 = 5/3
    assert rmse(pred, true) == pytest.approx(math.sqrt(13 / 3))
    assert mae(pred, true) == pytest.approx(5 / 3)
    assert isinstance(rmse(pred, true), float) and isinstance(mae(pred, true), float)
    assert rmse(true, true) == 0.0


def test_rmse_mae_validation() -> None:
    with pytest.raises(ValueError, match="shape"):
        rmse(np.zeros(3), np.zeros(2))
    with pytest.raises(ValueError, match="shape"):
        mae(np.zeros(3), np.zeros(2))
    with pytest.raises(ValueError, match="non-empty"):
        rmse(np.zeros(0), np.zeros(0))


# ----------------------------------------------------------------------------- properties

# A small value set forces ties and includes infinities.
VALUES = st.sampled_from([-np.inf, -1.0, 0.0, 0.5, 1.0, 2.0, np.inf])


@st.composite
def rank_case(draw: st.DrawFn) -> tuple[np.ndarray, list[list[int]], np.ndarray]:
    n_users = draw(st.integers(1, 5))
    n_items = draw(st.integers(1, 8))
    scores = np.array(
        [[draw(VALUES) for _ in range(n_items)] for _ in range(n_users)], dtype=np.float64
    ).reshape(n_users, n_items)
    excl = [draw(st.lists(st.integers(0, n_items - 1), max_size=2 * n_items)) for _ in range(n_users)]
    positives = np.array([draw(st.integers(0, n_items - 1)) for _ in range(n_users)])
    return scores, excl, positives


@settings(max_examples=200, deadline=None)
@given(
    st.integers(1, 5).flatmap(
        lambda u: st.tuples(
            st.lists(VALUES, min_size=u, max_size=u),
            st.integers(0, 6).flatmap(
                lambda n: st.tuples(
                    st.lists(st.lists(VALUES, min_size=n, max_size=n), min_size=u, max_size=u),
                    st.lists(st.lists(st.booleans(), min_size=n, max_size=n), min_size=u, max_size=u),
                )
            ),
        )
    )
)
def test_sampled_ranks_matches_brute_force(case: tuple) -> None:
    pos_l, (neg_l, valid_l) = case
    pos = np.array(pos_l, dtype=np.float64)
    neg = np.array(neg_l, dtype=np.float64).reshape(len(pos_l), -1)
    valid = np.array(valid_l, dtype=bool).reshape(neg.shape)
    expected = [
        sum(1 for j in range(neg.shape[1]) if valid[u, j] and neg[u, j] >= pos[u]) for u in range(len(pos))
    ]
    np.testing.assert_array_equal(sampled_ranks(pos, neg, valid), expected)
    unmasked = [sum(1 for j in range(neg.shape[1]) if neg[u, j] >= pos[u]) for u in range(len(pos))]
    np.testing.assert_array_equal(sampled_ranks(pos, neg), unmasked)


@settings(max_examples=200, deadline=None)
@given(rank_case())
def test_full_ranks_matches_brute_force(case: tuple) -> None:
    scores, excl, positives = case
    expected = []
    for u, p in enumerate(positives):
        removed = set(excl[u]) - {int(p)}
        expected.append(
            sum(
                1
                for i in range(scores.shape[1])
                if i != p and i not in removed and scores[u, i] >= scores[u, p]
            )
        )
    np.testing.assert_array_equal(full_ranks(scores, positives, *csr(excl)), expected)


@settings(max_examples=200, deadline=None)
@given(rank_case(), st.integers(1, 10), st.booleans())
def test_top_k_matches_stable_argsort(case: tuple, k: int, use_excl: bool) -> None:
    scores, excl, _ = case
    if not use_excl:
        excl = [[] for _ in excl]
    expected = np.full((scores.shape[0], k), -1)
    for u in range(scores.shape[0]):
        order = [int(i) for i in np.argsort(-scores[u], kind="stable") if int(i) not in set(excl[u])]
        expected[u, : len(order[:k])] = order[:k]
    got = top_k(scores, k, *csr(excl)) if use_excl else top_k(scores, k)
    np.testing.assert_array_equal(got, expected)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.lists(st.integers(-1, 4), min_size=0, max_size=5), min_size=1, max_size=4),
    st.lists(st.lists(st.integers(-3, 3), min_size=3, max_size=3), min_size=5, max_size=5),
)
def test_intra_list_diversity_matches_brute_force(lists: list[list[int]], vecs_l: list[list[int]]) -> None:
    width = max(len(r) for r in lists)
    topk = np.array([r + [-1] * (width - len(r)) for r in lists], dtype=np.int64).reshape(len(lists), width)
    vecs = np.array(vecs_l, dtype=np.float64)
    expected = []
    for row in topk:
        items = [i for i in row if i >= 0]
        dists = []
        for a in range(len(items)):
            for b in range(a + 1, len(items)):
                va, vb = vecs[items[a]], vecs[items[b]]
                na, nb = np.linalg.norm(va), np.linalg.norm(vb)
                cos = float(va @ vb / (na * nb)) if na > 0 and nb > 0 else 0.0
                dists.append(1.0 - cos)
        expected.append(float(np.mean(dists)) if dists else 0.0)
    np.testing.assert_allclose(intra_list_diversity(topk, vecs), expected, atol=1e-9)
