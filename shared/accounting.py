"""Privacy accounting: plan the noise for a whole run, track spent epsilon, recompute independently.

A node's spend is a *history* of DP-SGD segments ``(noise_multiplier, sample_rate, steps)``
(Opacus's own format), one per round it trained. Epsilon after any prefix of the history
is computed with Opacus: ``prv`` (the default; Opacus's PRV accountant, Gopi et al. 2021,
numerically tight, an upper bound within ``eps_error = 0.01``) or ``rdp`` (Rényi DP, looser:
e.g. z = 3.30, q = 1, 30 steps at delta = 1e-5 is epsilon 7.98 under PRV and 8.61 under RDP).
The auditor recomputes it with Google's ``dp-accounting`` (RDP, or PLD for ``prv``), an
implementation independent of Opacus. Segments of the same mechanism ``(z, q)`` compose into
one segment with the summed steps (composition is exact and order-free), which keeps PRV/PLD
evaluation cheap however many rounds a history has.
Every epsilon here is for Poisson-sampled Gaussian mechanisms at the given delta; the privacy
unit is whatever one sample was (a user or an interaction), stated by the caller.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

Segment = tuple[float, float, int]  # (noise multiplier, sample rate, steps)
ACCOUNTANTS = ("rdp", "prv")
# Integer RDP orders, used by both implementations. Opacus's default list adds fractional orders in (1, 2),
# which tighten epsilon at large budgets, but Google's dp-accounting cannot evaluate many of them (its series
# does not converge and it silently drops the order), so the two would disagree by far more than 1 % at high
# epsilon. On integer orders the two implementations agree to floating-point precision; the price is a slightly
# looser (larger) epsilon, e.g. 6.03 instead of 5.98 for z=0.7, q=0.1, 40 steps, delta=0.008.
RDP_ORDERS = [*range(2, 64), 64, 96, 128, 256, 512, 1024]


DEFAULT_ACCOUNTANT = "prv"
DEFAULT_DELTA = 1e-5


def merged(history: Sequence[Segment]) -> list[Segment]:
    """The history with the steps of identical mechanisms ``(z, q)`` summed (first-appearance order)."""
    steps: dict[tuple[float, float], int] = {}
    for z, q, s in history:
        if int(s) > 0:
            key = (float(z), float(q))
            steps[key] = steps.get(key, 0) + int(s)
    return [(z, q, s) for (z, q), s in steps.items()]


def epsilon(history: Sequence[Segment], delta: float, accountant: str = DEFAULT_ACCOUNTANT) -> float:
    """Epsilon of the composed history at ``delta`` (Opacus). 0 for an empty history."""
    segments = merged(history)
    if not segments:
        return 0.0
    if any(z <= 0 for z, _, _ in segments):
        return math.inf
    if accountant not in ACCOUNTANTS:
        raise ValueError(f"unknown accountant {accountant!r} (one of {', '.join(ACCOUNTANTS)})")
    return _opacus_epsilon(tuple(segments), float(delta), accountant)


@lru_cache(maxsize=8192)
def _opacus_epsilon(segments: tuple[Segment, ...], delta: float, accountant: str) -> float:
    """Opacus's epsilon of merged segments, memoised: a pure function of its arguments.

    A PRV evaluation takes 0.03-0.07 s and planning one node's noise ~0.8 s (12 evaluations); an in-process
    federation of one-user nodes plans and checks the same histories on every node (943 of them).
    """
    from opacus.accountants import PRVAccountant, RDPAccountant

    acc = RDPAccountant() if accountant == "rdp" else PRVAccountant()
    acc.load_state_dict({"history": list(segments), "mechanism": acc.mechanism()})  # Opacus's own state format
    if accountant == "rdp":
        return float(acc.get_epsilon(delta, alphas=RDP_ORDERS))
    return float(acc.get_epsilon(delta))


def independent_epsilon(history: Sequence[Segment], delta: float, accountant: str = DEFAULT_ACCOUNTANT) -> float:
    """The same quantity computed with Google's dp-accounting (RDP, or PLD standing in for PRV)."""
    segments = merged(history)
    if not segments:
        return 0.0
    if any(z <= 0 for z, _, _ in segments):
        return math.inf
    return _google_epsilon(tuple(segments), float(delta), accountant)


@lru_cache(maxsize=8192)
def _google_epsilon(segments: tuple[Segment, ...], delta: float, accountant: str) -> float:
    """dp-accounting's epsilon of merged segments, memoised like :func:`_opacus_epsilon`.

    An audit recomputes every chain; one-user nodes sampled in the same rounds have identical histories.
    """
    import dp_accounting
    from absl import logging as absl_logging
    from dp_accounting import pld, rdp

    # dp-accounting drops fractional orders whose series does not converge and logs each one; the
    # result stays a valid bound (the minimum over the remaining orders), so keep the log quiet.
    absl_logging.set_verbosity(absl_logging.ERROR)
    acc = rdp.RdpAccountant(orders=RDP_ORDERS) if accountant == "rdp" else pld.PLDAccountant()
    for z, q, steps in segments:
        event = dp_accounting.GaussianDpEvent(z)
        if q < 1.0:
            event = dp_accounting.PoissonSampledDpEvent(q, event)
        acc.compose(event, steps)
    return float(acc.get_epsilon(delta))


def plan_noise(target_epsilon: float, delta: float, sample_rate: float, steps: int,
               accountant: str = DEFAULT_ACCOUNTANT) -> float:
    """The smallest noise multiplier (to 0.5 %) whose ``steps`` steps stay within ``target_epsilon``.

    Bisection on ``z`` with the accountant itself; the returned ``z`` never overshoots the target.
    """
    return plan_noise_after([], target_epsilon, delta, sample_rate, steps, accountant)


def plan_noise_after(history: Sequence[Segment], target_epsilon: float, delta: float, sample_rate: float,
                     steps: int, accountant: str = DEFAULT_ACCOUNTANT) -> float:
    """The smallest noise multiplier (to 0.5 %) whose ``steps`` steps after ``history`` stay within the target.

    Raises ValueError if ``history`` alone already reaches the target (no budget is left).
    """
    if not math.isfinite(target_epsilon) or steps <= 0:
        return 0.0
    if history and epsilon(history, delta, accountant) >= target_epsilon:
        raise ValueError(f"the history already spends epsilon >= {target_epsilon:g}")

    def eps(z: float) -> float:
        return epsilon([*history, (z, sample_rate, steps)], delta, accountant)

    lo, hi = 0.0, 1.0
    while eps(hi) > target_epsilon:
        lo, hi = hi, hi * 2
    while hi - lo > 0.005 * hi:
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if eps(mid) > target_epsilon else (lo, mid)
    return hi


def default_delta(n_units: int) -> float:
    """``1e-5``, or ``1/(10 n)`` when a node has more than 10^4 units: never above ``1/n``."""
    return min(DEFAULT_DELTA, 0.1 / max(n_units, 1))
