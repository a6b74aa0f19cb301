"""Tests for shared.one_run_audit (Steinke, Nasr & Jagielski 2023, "Privacy Auditing with One (1) Training Run")."""

from __future__ import annotations

import dataclasses
import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

import shared.one_run_audit as ora
from shared.one_run_audit import (
    EPSILON_SEARCH_CAP,
    AuditResult,
    audit_scores,
    epsilon_lower_bound,
    p_value,
)


def closed_form_perfect(r: int, confidence: float) -> float:
    """δ = 0 and all r guesses correct: p = q^r, so ε̂ = logit(q) with q = (1 − c)^(1/r)."""
    log_q = math.log(1.0 - confidence) / r
    return log_q - math.log(-math.expm1(log_q))


def reference_p_value(m: int, r: int, v: int, eps: float, delta: float) -> float:
    """The main theorem written out directly (pure Python, no scipy), max over *all* i = 1..m."""
    q = 1.0 / (1.0 + math.exp(-eps))
    pmf = [math.comb(r, k) * q**k * (1.0 - q) ** (r - k) for k in range(r + 1)]
    beta = sum(pmf[v:])
    alpha = 0.0
    for i in range(1, m + 1):
        alpha = max(alpha, sum(pmf[max(0, v - i) : v]) / i)
    return min(1.0, beta + 2.0 * m * delta * alpha)


def randomized_response(seed: int, m: int, eps0: float) -> tuple[np.ndarray, np.ndarray]:
    """ε0-DP in every canary: its score is its bit, flipped w.p. 1/(1+e^ε0), plus continuous jitter."""
    rng = np.random.default_rng(seed)
    included = rng.random(m) < 0.5
    flipped = rng.random(m) < 1.0 / (1.0 + math.exp(eps0))
    scores = (included ^ flipped).astype(float) + 1e-6 * rng.random(m)
    return scores, included


# --------------------------------------------------------------------------- golden values


def test_p_value_hand_computed_golden_values():
    # ε = δ = 0, 10 of 10 correct: 2^-10.
    assert p_value(10, 10, 10, 0.0, 0.0) == pytest.approx(2.0**-10, rel=1e-12)
    # ε = 1, δ = 0, 10 of 10 correct: q^10 with q = e/(1+e).
    assert p_value(10, 10, 10, 1.0, 0.0) == pytest.approx((math.e / (1 + math.e)) ** 10, rel=1e-12)
    # m = r = v = 10, ε = 0, δ = 1e-3, X ~ Bin(10, 1/2): P[10 > X >= 10 - i]·1024 for i = 1..10 is
    # 10, 55, 175, 385, 637, 847, 967, 1012, 1022, 1023; divided by i the maximum is at i = 6,
    # α = 847/6144, so p = 1/1024 + 2·10·1e-3·847/6144 = 1/1024 + 847/307200.
    expected = Fraction(1, 1024) + Fraction(847, 307200)
    assert p_value(10, 10, 10, 0.0, 1e-3) == pytest.approx(float(expected), rel=1e-12)
    # no correct guesses (or no guesses at all) is never evidence
    assert p_value(100, 50, 0, 3.0, 0.0) == 1.0
    assert p_value(100, 0, 0, 0.0, 0.0) == 1.0


@pytest.mark.parametrize(("r", "v"), [(1, 1), (10, 7), (100, 60), (1000, 530), (999, 999)])
def test_p_value_at_epsilon_zero_is_fair_coin_tail(r, v):
    assert p_value(r, r, v, 0.0, 0.0) == pytest.approx(stats.binom.sf(v - 1, r, 0.5), rel=1e-10)


@pytest.mark.parametrize("r", [1, 10, 100, 1000, 100_000])
@pytest.mark.parametrize("confidence", [0.9, 0.95, 0.99])
def test_epsilon_lower_bound_perfect_guesses_closed_form(r, confidence):
    got = epsilon_lower_bound(r, r, r, 0.0, confidence)
    want = max(0.0, closed_form_perfect(r, confidence))  # r = 1: q = 1 - c < 1/2, nothing to conclude
    assert got == pytest.approx(want, abs=1e-4)
    assert got <= want  # the returned end of the bracket is itself rejected: conservative
    # spot values: r = 10 -> 1.05187, r = 100 -> 3.49297, r = 1000 -> 5.80907 (all at 95 %)


def test_epsilon_lower_bound_spot_values():
    assert epsilon_lower_bound(10, 10, 10, 0.0) == pytest.approx(1.0518732, abs=1e-6)
    assert epsilon_lower_bound(1000, 1000, 1000, 0.0) == pytest.approx(5.8090683, abs=1e-5)
    # the δ term can only cost: m = 1000 perfect guesses, δ = 1e-5
    assert epsilon_lower_bound(1000, 1000, 1000, 1e-5) < epsilon_lower_bound(1000, 1000, 1000, 0.0)


def test_epsilon_lower_bound_matches_root_of_p_value():
    # δ = 0 makes p continuous in ε: the bound is the root of p(ε) = 1 - c, to ~1e-6 relative
    from scipy.optimize import brentq

    m, r, v = 2000, 1000, 800
    root = brentq(lambda e: p_value(m, r, v, e, 0.0) - 0.05, 0.0, 10.0, xtol=1e-14)
    got = epsilon_lower_bound(m, r, v, 0.0, 0.95)
    assert got <= root
    assert got == pytest.approx(root, rel=2e-6)


def test_epsilon_lower_bound_nothing_to_conclude():
    assert epsilon_lower_bound(100, 0, 0, 0.0) == 0.0
    assert epsilon_lower_bound(100, 50, 0, 0.0) == 0.0
    assert epsilon_lower_bound(100, 50, 25, 0.0) == 0.0
    assert epsilon_lower_bound(100, 3, 3, 0.0) == 0.0  # 1/8 > 5 %: three coin flips prove nothing
    assert epsilon_lower_bound(100, 100, 100, 1.0) == 0.0  # δ = 1 allows anything


def test_epsilon_lower_bound_is_capped(monkeypatch):
    monkeypatch.setattr(ora, "p_value", lambda *args: 0.0)
    assert epsilon_lower_bound(10, 10, 10, 0.0) == EPSILON_SEARCH_CAP


def test_large_epsilon_keeps_precision():
    # q = e^ε/(1+e^ε) rounds to 1 in double precision near ε = 37; the wrong-guess form does not
    assert p_value(10**6, 10**6, 10**6, 30.0, 0.0) == pytest.approx(math.exp(-(10**6) * math.exp(-30.0)), rel=1e-9)
    assert p_value(10**6, 10**6, 10**6, 30.0, 0.0) < 1.0


# --------------------------------------------------------------------------- properties

counts = st.integers(1, 60).flatmap(
    lambda m: st.integers(1, m).flatmap(lambda r: st.tuples(st.just(m), st.just(r), st.integers(0, r)))
)
epsilons = st.floats(0.0, 8.0, allow_nan=False)
deltas = st.one_of(st.just(0.0), st.floats(1e-9, 1.0), st.sampled_from([1e-6, 1e-5, 1e-3, 1e-2]))
confidences = st.floats(0.5, 0.999)


@settings(max_examples=200, deadline=None)
@given(counts, epsilons, deltas)
def test_p_value_matches_direct_formula(mrv, eps, delta):
    m, r, v = mrv
    assert p_value(m, r, v, eps, delta) == pytest.approx(reference_p_value(m, r, v, eps, delta), rel=1e-9, abs=1e-14)


@settings(max_examples=300, deadline=None)
@given(counts, epsilons, deltas)
def test_p_value_in_unit_interval_and_monotone_in_v(mrv, eps, delta):
    m, r, v = mrv
    p = p_value(m, r, v, eps, delta)
    assert 0.0 <= p <= 1.0
    if v < r:
        assert p_value(m, r, v + 1, eps, delta) <= p + 1e-12


@settings(max_examples=300, deadline=None)
@given(counts, epsilons, epsilons, deltas)
def test_p_value_non_decreasing_in_epsilon(mrv, e1, e2, delta):
    # a weaker null (larger ε) is harder to reject: the p-value grows with ε
    m, r, v = mrv
    lo, hi = sorted((e1, e2))
    assert p_value(m, r, v, lo, delta) <= p_value(m, r, v, hi, delta) + 1e-12


@settings(max_examples=200, deadline=None)
@given(counts, epsilons, deltas, deltas)
def test_p_value_non_decreasing_in_delta(mrv, eps, d1, d2):
    m, r, v = mrv
    lo, hi = sorted((d1, d2))
    assert p_value(m, r, v, eps, lo) <= p_value(m, r, v, eps, hi) + 1e-12


def _tol(eps: float) -> float:
    return 2e-6 * eps + 1e-9


@settings(max_examples=100, deadline=None)
@given(counts, deltas, confidences)
def test_epsilon_lower_bound_non_decreasing_in_v(mrv, delta, confidence):
    m, r, v = mrv
    if v == r:
        v -= 1
    lower = epsilon_lower_bound(m, r, v, delta, confidence)
    higher = epsilon_lower_bound(m, r, v + 1, delta, confidence)
    assert higher >= lower - _tol(lower)
    assert 0.0 <= lower <= EPSILON_SEARCH_CAP


@settings(max_examples=100, deadline=None)
@given(counts, deltas, deltas, confidences)
def test_epsilon_lower_bound_non_increasing_in_delta(mrv, d1, d2, confidence):
    m, r, v = mrv
    lo, hi = sorted((d1, d2))
    small_delta = epsilon_lower_bound(m, r, v, lo, confidence)
    assert epsilon_lower_bound(m, r, v, hi, confidence) <= small_delta + _tol(small_delta)


@settings(max_examples=100, deadline=None)
@given(counts, deltas, confidences)
def test_epsilon_lower_bound_zero_at_chance_level(mrv, delta, confidence):
    m, r, v = mrv
    v = min(v, r // 2)
    assert epsilon_lower_bound(m, r, v, delta, confidence) == 0.0


@settings(max_examples=100, deadline=None)
@given(counts, deltas, confidences)
def test_epsilon_lower_bound_is_rejected_and_tight(mrv, delta, confidence):
    m, r, v = mrv
    eps = epsilon_lower_bound(m, r, v, delta, confidence)
    if eps > 0.0:
        assert p_value(m, r, v, eps, delta) < 1.0 - confidence
        assert p_value(m, r, v, eps + _tol(eps) + 1e-6 * max(eps, 1.0), delta) >= 1.0 - confidence


# --------------------------------------------------------------------------- input validation


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((10, 11, 5, 1.0, 0.0), "v <= r <= m"),
        ((10, 5, 6, 1.0, 0.0), "v <= r <= m"),
        ((10, 5, -1, 1.0, 0.0), "v <= r <= m"),
        ((10.0, 5, 3, 1.0, 0.0), "m must be an integer"),
        ((10, True, 1, 1.0, 0.0), "r must be an integer"),
        ((10, 5, 3, -0.1, 0.0), "epsilon"),
        ((10, 5, 3, math.inf, 0.0), "epsilon"),
        ((10, 5, 3, math.nan, 0.0), "epsilon"),
        ((10, 5, 3, 1.0, -1e-9), "delta"),
        ((10, 5, 3, 1.0, 1.5), "delta"),
        ((10, 5, 3, 1.0, math.nan), "delta"),
    ],
)
def test_p_value_rejects_bad_input(args, match):
    with pytest.raises(ValueError, match=match):
        p_value(*args)


def test_p_value_accepts_numpy_integers():
    assert p_value(np.int64(10), np.int32(10), np.uint8(10), 0.0, 0.0) == pytest.approx(2.0**-10)


@pytest.mark.parametrize("confidence", [0.0, 1.0, -0.5, 1.5, math.nan])
def test_epsilon_lower_bound_rejects_bad_confidence(confidence):
    with pytest.raises(ValueError, match="confidence"):
        epsilon_lower_bound(10, 10, 10, 0.0, confidence)


def test_epsilon_lower_bound_rejects_bad_counts_and_delta():
    with pytest.raises(ValueError, match="v <= r <= m"):
        epsilon_lower_bound(10, 5, 6, 0.0)
    with pytest.raises(ValueError, match="delta"):
        epsilon_lower_bound(10, 5, 5, 2.0)


def _ok_inputs(m: int = 20) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.random(m), rng.random(m) < 0.5


@pytest.mark.parametrize(
    ("scores", "included", "kwargs", "match"),
    [
        (np.arange(5.0), np.array([1, 0, 1, 0]), {}, "differ in length"),
        (np.zeros((2, 2)), np.zeros((2, 2), bool), {}, "1-D"),
        (np.array([]), np.array([], bool), {}, "at least one"),
        (np.array([0.1, np.nan]), np.array([True, False]), {}, "finite"),
        (np.array([0.1, np.inf]), np.array([True, False]), {}, "finite"),
        (np.array(["a", "b"]), np.array([True, False]), {}, "real numbers"),
        (np.array([0.1, 0.2]), np.array([1, 2]), {}, "boolean or 0/1"),
        (np.array([0.1, 0.2]), np.array([0.5, 1.0]), {}, "boolean or 0/1"),
        (np.array([0.1, 0.2]), np.array(["1", "0"]), {}, "boolean or 0/1"),
        (np.array([0.1, 0.1, 0.3]), np.array([True, False, True]), {}, "ties"),
    ],
)
def test_audit_scores_rejects_bad_arrays(scores, included, kwargs, match):
    with pytest.raises(ValueError, match=match):
        audit_scores(scores, included, delta=0.0, **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"delta": -0.1}, "delta"),
        ({"delta": 0.0, "confidence": 1.0}, "confidence"),
        ({"delta": 0.0, "confidence": 0.0}, "confidence"),
        ({"delta": 0.0, "guess_fractions": ()}, "empty"),
        ({"delta": 0.0, "guess_fractions": (0.1, 0.6)}, "fractions must be in"),
        ({"delta": 0.0, "guess_fractions": (0.0,)}, "fractions must be in"),
        ({"delta": 0.0, "guess_fractions": (0.1, 0.1)}, "distinct"),
        ({"delta": 0.0, "guess_fractions": (1.2,), "one_sided": True}, "fractions must be in"),
    ],
)
def test_audit_scores_rejects_bad_parameters(kwargs, match):
    scores, included = _ok_inputs()
    with pytest.raises(ValueError, match=match):
        audit_scores(scores, included, **kwargs)


# --------------------------------------------------------------------------- the guessing game


@pytest.mark.parametrize("delta", [0.0, 1e-5])
def test_audit_scores_perfect_separation_gives_maximal_bound(delta):
    m = 1000
    included = np.random.default_rng(1).permutation(np.arange(m) < m // 2)  # exactly 500 in
    fractions = (0.05, 0.1, 0.25, 0.5)
    # integer scores: every canary ties with 499 others, broken by the caller's rng
    result = audit_scores(
        included.astype(int), included, delta=delta, guess_fractions=fractions, rng=np.random.default_rng(2)
    )
    per_test = 1.0 - 0.05 / len(fractions)
    assert result.per_test_confidence == pytest.approx(per_test)
    for outcome, f in zip(result.outcomes, fractions, strict=True):
        k = int(f * m)
        assert (outcome.k_plus, outcome.k_minus, outcome.r, outcome.v) == (k, k, 2 * k, 2 * k)
        assert outcome.epsilon_lower_bound == epsilon_lower_bound(m, 2 * k, 2 * k, delta, per_test)
    assert (result.k_plus, result.k_minus, result.r, result.v, result.guess_fraction) == (500, 500, m, m, 0.5)
    assert result.epsilon_lower_bound == max(o.epsilon_lower_bound for o in result.outcomes)
    if delta == 0.0:
        assert result.epsilon_lower_bound == pytest.approx(closed_form_perfect(m, per_test), abs=1e-4)


def test_audit_scores_independent_scores_give_nothing():
    positive = []
    for seed in range(20):
        rng = np.random.default_rng(100 + seed)
        included = rng.random(2000) < 0.5
        scores = rng.normal(size=2000)  # a useless attack
        result = audit_scores(scores, included, delta=1e-5)
        positive.append(result.epsilon_lower_bound > 0.0)
    # each seed is positive w.p. <= 5 %; P[Bin(20, 0.05) >= 4] < 2 %
    assert sum(positive) <= 3


def test_ties_are_broken_without_looking_at_position():
    # members listed last and all scores equal: a stable sort by position would call every guess right
    m = 1000
    included = np.arange(m) >= m // 2
    result = audit_scores(np.zeros(m), included, delta=0.0, guess_fractions=(0.5,), rng=np.random.default_rng(3))
    assert result.r == m
    assert 0.4 * m < result.v < 0.6 * m  # ~ m/2 ± 16; position order would give v = m
    assert result.epsilon_lower_bound == 0.0


def test_audit_scores_one_sided_and_empty_guess_counts():
    scores, included = randomized_response(7, 60, 3.0)
    result = audit_scores(scores, included, delta=0.0, guess_fractions=(0.01, 0.5, 1.0), one_sided=True)
    assert [(o.k_plus, o.k_minus) for o in result.outcomes] == [(0, 0), (30, 0), (60, 0)]
    assert result.outcomes[0].epsilon_lower_bound == 0.0  # floor(0.6) = 0 guesses
    assert result.outcomes[2].v == int(included.sum())  # guessing "in" everywhere is right for every member
    assert result.k_minus == 0


def test_audit_scores_bonferroni_costs_only_the_correction():
    scores, included = randomized_response(11, 2000, 2.0)
    alone = audit_scores(scores, included, delta=0.0, guess_fractions=(0.25,))
    together = audit_scores(scores, included, delta=0.0, guess_fractions=(0.25, 0.1, 0.5))
    same_k = together.outcomes[0]
    assert (same_k.r, same_k.v) == (alone.r, alone.v)
    assert same_k.epsilon_lower_bound < alone.epsilon_lower_bound  # tested at 1 - 0.05/3, not 0.95
    assert same_k.epsilon_lower_bound == epsilon_lower_bound(2000, alone.r, alone.v, 0.0, 1 - 0.05 / 3)


def test_audit_scores_accepts_zero_one_bits_and_is_frozen():
    scores, included = randomized_response(5, 500, 2.0)
    as_bool = audit_scores(scores, included, delta=1e-5)
    as_int = audit_scores(scores, included.astype(np.int8), delta=1e-5)
    assert as_int == as_bool
    assert isinstance(as_bool, AuditResult)
    assert (as_bool.m, as_bool.delta, as_bool.confidence) == (500, 1e-5, 0.95)
    with pytest.raises(dataclasses.FrozenInstanceError):
        as_bool.epsilon_lower_bound = 1.0  # type: ignore[misc]


# --------------------------------------------------------------------------- simulation: randomized response


@pytest.mark.parametrize("eps0", [0.5, 1.0, 2.0, 4.0])
def test_randomized_response_bound_is_valid_and_powerful(eps0):
    # Randomized response is exactly the worst case of the theorem, so at 95 % about one seed in 20
    # would exceed ε0; at 99.9 % the chance that any of these 20 seeds does is below 2 %.
    bounds = [
        audit_scores(*randomized_response(seed, 2000, eps0), delta=0.0, confidence=0.999).epsilon_lower_bound
        for seed in range(20)
    ]
    assert max(bounds) <= eps0
    if eps0 >= 2.0:
        assert min(bounds) > 0.6 * eps0  # clearly above 0 (typically ~0.85 ε0)
    # a δ term only lowers the bound, so it stays valid
    with_delta = audit_scores(*randomized_response(0, 2000, eps0), delta=1e-5, confidence=0.999)
    assert with_delta.epsilon_lower_bound <= bounds[0]


def test_randomized_response_violation_rate_is_calibrated():
    # k = 500 per side falls inside the score-1 / score-0 groups, so v ~ Bin(1000, e^ε0/(1+e^ε0)) exactly:
    # "ε̂ > ε0" must happen at most 1 - c of the time, and (the test being tight) not much less often.
    eps0, confidence, seeds = 1.0, 0.8, 300
    exceed = sum(
        audit_scores(
            *randomized_response(1000 + seed, 2000, eps0), delta=0.0, confidence=confidence, guess_fractions=(0.25,)
        ).epsilon_lower_bound
        > eps0
        for seed in range(seeds)
    )
    rate = exceed / seeds
    assert rate <= 0.2 + 3 * math.sqrt(0.2 * 0.8 / seeds)
    assert rate >= 0.08
