"""Privacy auditing with one training run (Steinke, Nasr & Jagielski, NeurIPS 2023, arXiv:2305.08846).

The game: ``m`` canaries are each put into the training data independently with
probability 1/2; the inclusion bits must come from a source the trained system
cannot see or influence (a secret RNG). After training, the auditor scores every
canary, guesses "in" for the ``k_plus`` highest scores and "out" for the
``k_minus`` lowest, abstains on the rest (``r = k_plus + k_minus`` guesses) and
counts the ``v`` correct guesses.

If training is (ε, δ)-DP, the paper's main theorem bounds the chance of ``v`` or more
correct guesses by

    P[W ≥ v] ≤ β + 2·m·δ·α,   β = P[Binomial(r, q) ≥ v],   q = e^ε / (1 + e^ε),
    α = max_{i = 1..m} P[v > Binomial(r, q) ≥ v − i] / i,

which :func:`p_value` computes (capped at 1; for ``i > v`` the window already covers
``[0, v)``, so the maximum is attained with ``i ≤ v``: this is the paper's appendix
code). :func:`epsilon_lower_bound` returns the largest ε whose null hypothesis
"(ε, δ)-DP" is rejected at the given confidence, and :func:`audit_scores` plays the
game on membership scores with a fixed, Bonferroni-corrected set of guess counts.

Everything here is pure (numpy + scipy); nothing reads clocks, files or global RNGs.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import special, stats

__all__ = [
    "DEFAULT_GUESS_FRACTIONS",
    "EPSILON_SEARCH_CAP",
    "AuditResult",
    "GuessOutcome",
    "audit_scores",
    "epsilon_lower_bound",
    "p_value",
]

#: The bisection never looks beyond this ε. It is never the binding limit in practice:
#: r perfect guesses at δ = 0 certify at most logit((1 − c)^(1/r)) ≈ log(r / ln(1/(1 − c))),
#: about 15 for a million guesses at 95 %, and in double precision p_value(ε = 50) is 1.
EPSILON_SEARCH_CAP = 50.0

#: Guess counts k_plus = k_minus = floor(fraction · m) evaluated by :func:`audit_scores`
#: unless the caller fixes others (before looking at the scores).
DEFAULT_GUESS_FRACTIONS: tuple[float, ...] = (0.01, 0.05, 0.1, 0.25, 0.5)

_REL_TOL = 1e-6  # bisection stops when the bracket is narrower than this times ε (relative)
_ABS_TOL = 1e-10  # ... or narrower than this (absolute; matters only near ε = 0)


def _count(name: str, value: object) -> int:
    if isinstance(value, bool | np.bool_):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise ValueError(f"{name} must be an integer, got {value!r}") from None


def _check_counts(m: object, r: object, v: object) -> tuple[int, int, int]:
    m_, r_, v_ = _count("m", m), _count("r", r), _count("v", v)
    if not 0 <= v_ <= r_ <= m_:
        raise ValueError(f"need 0 <= v <= r <= m, got m={m_}, r={r_}, v={v_}")
    return m_, r_, v_


def _check_delta(delta: float) -> float:
    delta = float(delta)
    if not 0.0 <= delta <= 1.0:  # also rejects NaN
        raise ValueError(f"delta must be in [0, 1], got {delta}")
    return delta


def _check_confidence(confidence: float) -> float:
    confidence = float(confidence)
    if not 0.0 < confidence < 1.0:  # also rejects NaN
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return confidence


def p_value(m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    """Upper bound on P[≥ v of r guesses correct] when training is (ε, δ)-DP (paper's main theorem).

    Returns ``min(1, β + 2·m·δ·α)`` with β, α as in the module docstring. Any auditor
    whose guesses depend only on the training output (not on the inclusion bits),
    with the ``m`` bits drawn independently with probability 1/2, makes ``v`` or more
    correct guesses with probability at most this value under the null hypothesis.
    The result is in [0, 1], equals ``P[Binomial(r, 1/2) ≥ v]`` at ε = δ = 0, and is 1
    for ``v = 0``.

    Computed through the number of *wrong* guesses, ``Binomial(r, 1/(1 + e^ε))``, so
    that large ε loses no precision to ``q`` rounding to 1.

    Raises:
        ValueError: unless ``0 <= v <= r <= m`` are integers, ``epsilon`` is finite and
            non-negative and ``delta`` is in [0, 1].
    """
    m, r, v = _check_counts(m, r, v)
    epsilon = float(epsilon)
    if not (math.isfinite(epsilon) and epsilon >= 0.0):
        raise ValueError(f"epsilon must be finite and >= 0, got {epsilon}")
    delta = _check_delta(delta)
    if v == 0:
        return 1.0
    p_wrong = float(special.expit(-epsilon))  # 1 − q, accurate even where q rounds to 1
    wrong_allowed = r - v
    beta = float(stats.binom.cdf(wrong_allowed, r, p_wrong))  # = P[Binomial(r, q) >= v]
    if delta == 0.0:
        return min(1.0, beta)
    # P[Binomial(r, q) = v - j] = P[Binomial(r, 1 - q) = r - v + j] for j = 1..v
    j = np.arange(1, v + 1)
    window = np.cumsum(stats.binom.pmf(wrong_allowed + j, r, p_wrong))  # P[v > X >= v - i], i = j
    alpha = float(np.max(window / j))
    return min(1.0, beta + alpha * delta * 2.0 * m)


def epsilon_lower_bound(m: int, r: int, v: int, delta: float, confidence: float = 0.95) -> float:
    """The largest ε at which "(ε, δ)-DP" is rejected: p_value(m, r, v, ε, δ) < 1 − confidence.

    With probability at least ``confidence`` over the inclusion bits, a mechanism that
    is (ε, δ)-DP yields a bound no larger than ε (for a game whose guess counts were
    fixed in advance). Returns 0.0 when nothing can be concluded: no guesses (r = 0),
    no correct guesses (v = 0), or no rejection even at ε = 0 -- in particular
    whenever v ≤ r/2 and confidence ≥ 1/2.

    The search doubles an upper bracket from 1 to :data:`EPSILON_SEARCH_CAP` (50) and then
    bisects until the bracket is narrower than 1e-6·ε (or 1e-10); it returns the lower end,
    a value that has itself been rejected. If ε = 50 is still rejected (not reachable in
    double precision for any confidence below 1 − 1e-15), 50 is returned.

    Raises:
        ValueError: as :func:`p_value`, or if ``confidence`` is not in (0, 1).
    """
    m, r, v = _check_counts(m, r, v)
    delta = _check_delta(delta)
    level = 1.0 - _check_confidence(confidence)
    if r == 0 or v == 0:
        return 0.0

    def rejected(eps: float) -> bool:
        return p_value(m, r, v, eps, delta) < level

    if not rejected(0.0):
        return 0.0
    lo, hi = 0.0, 1.0
    while rejected(hi):
        if hi >= EPSILON_SEARCH_CAP:
            return EPSILON_SEARCH_CAP
        lo, hi = hi, min(2.0 * hi, EPSILON_SEARCH_CAP)
    # invariant: rejected(lo) and not rejected(hi)
    while hi - lo > max(_REL_TOL * lo, _ABS_TOL):
        mid = 0.5 * (lo + hi)
        if rejected(mid):
            lo = mid
        else:
            hi = mid
    return lo


@dataclass(frozen=True)
class GuessOutcome:
    """One pre-registered guess count of :func:`audit_scores` and what it certified."""

    guess_fraction: float
    k_plus: int
    k_minus: int
    r: int
    v: int
    epsilon_lower_bound: float


@dataclass(frozen=True)
class AuditResult:
    """The outcome of :func:`audit_scores`.

    ``epsilon_lower_bound`` holds with probability ≥ ``confidence`` overall: it is the
    largest of the per-guess-count bounds, each computed at ``per_test_confidence``
    (Bonferroni). ``r``, ``v``, ``k_plus``, ``k_minus`` and ``guess_fraction`` describe the
    guess count that gave it (the first one listed when several tie, e.g. all at 0);
    ``outcomes`` lists every guess count tried, in the order given.
    """

    m: int
    r: int
    v: int
    k_plus: int
    k_minus: int
    delta: float
    confidence: float
    epsilon_lower_bound: float
    guess_fraction: float
    per_test_confidence: float
    outcomes: tuple[GuessOutcome, ...]


def _check_fractions(guess_fractions: Sequence[float], one_sided: bool) -> tuple[float, ...]:
    fractions = tuple(float(f) for f in guess_fractions)
    if not fractions:
        raise ValueError("guess_fractions must not be empty")
    top = 1.0 if one_sided else 0.5
    for f in fractions:
        if not 0.0 < f <= top:  # also rejects NaN
            raise ValueError(f"guess fractions must be in (0, {top}], got {f}")
    if len(set(fractions)) != len(fractions):
        raise ValueError(f"guess_fractions must be distinct, got {fractions}")
    return fractions


def audit_scores(
    scores: np.ndarray,
    included: np.ndarray,
    *,
    delta: float,
    confidence: float = 0.95,
    guess_fractions: tuple[float, ...] = DEFAULT_GUESS_FRACTIONS,
    one_sided: bool = False,
    rng: np.random.Generator | None = None,
) -> AuditResult:
    """Play the one-run guessing game on membership scores and lower-bound ε.

    ``scores[i]`` is the auditor's membership score of canary ``i`` (higher = more
    likely "in"), computed from the trained output only; ``included[i]`` is its secret
    inclusion bit, drawn independently with probability 1/2. ``m = len(scores)``.

    Guess counts are fixed *before* looking at the outcome: for each fraction ``f`` in
    ``guess_fractions``, ``k = floor(f·m)`` and the auditor guesses "in" for the ``k``
    highest and "out" for the ``k`` lowest scores (``k_minus = 0`` when ``one_sided``,
    for attacks that only recognise members). Picking the best ``k`` after the fact
    would void the confidence, so every fraction is tested at level
    ``(1 − confidence) / len(guess_fractions)`` (Bonferroni) and the largest of those
    bounds is returned together with the ``k`` that produced it: with probability at
    least ``confidence`` no (ε, δ)-DP mechanism gives a bound above ε. A fraction with
    ``floor(f·m) = 0`` makes no guesses and contributes 0 (but still counts in the
    correction).

    Ties in ``scores`` are broken by a random permutation drawn from ``rng``, which
    must be independent of the inclusion bits; with ties and no ``rng`` this raises
    rather than break them by position (positions may encode membership).

    Raises:
        ValueError: on scores and bits of different lengths, non-1-D or empty input,
            non-finite scores, bits that are not boolean / 0-1, ``delta`` outside [0, 1],
            ``confidence`` outside (0, 1), an empty, repeated or out-of-range fraction
            (allowed: (0, 0.5], or (0, 1] when ``one_sided``), or ties without ``rng``.
    """
    s = np.asarray(scores)
    b = np.asarray(included)
    if s.ndim != 1 or b.ndim != 1:
        raise ValueError(f"scores and included must be 1-D, got shapes {s.shape} and {b.shape}")
    if s.shape != b.shape:
        raise ValueError(f"scores and included differ in length: {s.shape[0]} != {b.shape[0]}")
    if s.size == 0:
        raise ValueError("need at least one canary")
    if not (np.issubdtype(s.dtype, np.number) and not np.issubdtype(s.dtype, np.complexfloating)):
        raise ValueError(f"scores must be real numbers, got dtype {s.dtype}")
    s = s.astype(np.float64)
    if not np.all(np.isfinite(s)):
        raise ValueError("scores must be finite (no NaN or inf)")
    if b.dtype != np.bool_:
        if not np.issubdtype(b.dtype, np.number) or not np.all((b == 0) | (b == 1)):
            raise ValueError("included must be boolean or 0/1")
        b = b == 1
    delta = _check_delta(delta)
    confidence = _check_confidence(confidence)
    fractions = _check_fractions(guess_fractions, one_sided)

    m = int(s.size)
    if rng is not None:
        order = np.lexsort((rng.permutation(m), s))  # by score, ties in random order
    else:
        if np.unique(s).size != m:
            raise ValueError("scores contain ties: pass rng (independent of the inclusion bits) to break them")
        order = np.argsort(s, kind="stable")
    ranked = b[order]  # inclusion bits from lowest to highest score
    # correct "in" guesses among the top k / correct "out" guesses among the bottom k, for every k
    in_top = np.concatenate(([0], np.cumsum(ranked[::-1])))
    out_bottom = np.concatenate(([0], np.cumsum(~ranked)))

    per_test = 1.0 - (1.0 - confidence) / len(fractions)
    outcomes: list[GuessOutcome] = []
    for f in fractions:
        k = min(m, math.floor(f * m + 1e-9))
        k_plus, k_minus = k, (0 if one_sided else k)
        r = k_plus + k_minus
        v = int(in_top[k_plus] + out_bottom[k_minus])
        eps = epsilon_lower_bound(m, r, v, delta, per_test)
        outcomes.append(GuessOutcome(f, k_plus, k_minus, r, v, eps))
    best = max(outcomes, key=lambda o: o.epsilon_lower_bound)  # first of the maxima
    return AuditResult(
        m=m,
        r=best.r,
        v=best.v,
        k_plus=best.k_plus,
        k_minus=best.k_minus,
        delta=delta,
        confidence=confidence,
        epsilon_lower_bound=best.epsilon_lower_bound,
        guess_fraction=best.guess_fraction,
        per_test_confidence=per_test,
        outcomes=tuple(outcomes),
    )
