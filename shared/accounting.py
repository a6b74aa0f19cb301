"""Privacy accounting: plan the noise for a whole run, track spent epsilon, recompute independently.

A node's spend is a *history* of DP-SGD segments ``(noise_multiplier, sample_rate, steps)``
(Opacus's own format), one per round it trained. Epsilon after any prefix of the history
is computed with Opacus (``rdp`` default, or ``prv``); the auditor recomputes it with Google's
``dp-accounting`` (RDP, or PLD for ``prv``), an implementation independent of Opacus.
Every epsilon here is for Poisson-sampled Gaussian mechanisms at the given delta; the privacy
unit is whatever one sample was (a user or an interaction), stated by the caller.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

Segment = tuple[float, float, int]  # (noise multiplier, sample rate, steps)
ACCOUNTANTS = ("rdp", "prv")
# Integer RDP orders, used by both implementations. Opacus's default list adds fractional orders in (1, 2),
# which tighten epsilon at large budgets, but Google's dp-accounting cannot evaluate many of them (its series
# does not converge and it silently drops the order), so the two would disagree by far more than 1 % at high
# epsilon. On integer orders the two implementations agree to floating-point precision; the price is a slightly
# looser (larger) epsilon, e.g. 6.03 instead of 5.98 for z=0.7, q=0.1, 40 steps, delta=0.008.
RDP_ORDERS = [*range(2, 64), 64, 96, 128, 256, 512, 1024]


def epsilon(history: Sequence[Segment], delta: float, accountant: str = "rdp") -> float:
    """Epsilon of the composed history at ``delta`` (Opacus). 0 for an empty history."""
    segments = [(float(z), float(q), int(s)) for z, q, s in history if int(s) > 0]
    if not segments:
        return 0.0
    if any(z <= 0 for z, _, _ in segments):
        return math.inf
    if accountant == "rdp":
        from opacus.accountants import RDPAccountant

        acc = RDPAccountant()
        acc.history = segments
        return float(acc.get_epsilon(delta, alphas=RDP_ORDERS))
    if accountant == "prv":
        from opacus.accountants import PRVAccountant

        acc = PRVAccountant()
        acc.history = segments
        return float(acc.get_epsilon(delta))
    raise ValueError(f"unknown accountant {accountant!r} (one of {', '.join(ACCOUNTANTS)})")


def independent_epsilon(history: Sequence[Segment], delta: float, accountant: str = "rdp") -> float:
    """The same quantity computed with Google's dp-accounting (RDP, or PLD standing in for PRV)."""
    import dp_accounting
    from absl import logging as absl_logging
    from dp_accounting import pld, rdp

    # dp-accounting drops fractional orders whose series does not converge and logs each one; the
    # result stays a valid bound (the minimum over the remaining orders), so keep the log quiet.
    absl_logging.set_verbosity(absl_logging.ERROR)
    segments = [(float(z), float(q), int(s)) for z, q, s in history if int(s) > 0]
    if not segments:
        return 0.0
    if any(z <= 0 for z, _, _ in segments):
        return math.inf
    acc = rdp.RdpAccountant(orders=RDP_ORDERS) if accountant == "rdp" else pld.PLDAccountant()
    for z, q, steps in segments:
        event = dp_accounting.GaussianDpEvent(z)
        if q < 1.0:
            event = dp_accounting.PoissonSampledDpEvent(q, event)
        acc.compose(event, steps)
    return float(acc.get_epsilon(delta))


def plan_noise(target_epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str = "rdp") -> float:
    """Smallest noise multiplier (to Opacus's tolerance) whose ``steps`` steps stay within ``target_epsilon``."""
    if not math.isfinite(target_epsilon):
        return 0.0
    from opacus.accountants.utils import get_noise_multiplier

    z = float(get_noise_multiplier(target_epsilon=target_epsilon, target_delta=delta, sample_rate=sample_rate,
                                   steps=steps, accountant=accountant, epsilon_tolerance=0.005))
    # get_noise_multiplier stops within a tolerance; never return a plan that overshoots the target
    while epsilon([(z, sample_rate, steps)], delta, accountant) > target_epsilon:
        z *= 1.01
    return z


def default_delta(n_units: int) -> float:
    """``1 / n^1.1`` for ``n`` privacy units (users or interactions) on the node."""
    return 1.0 / max(n_units, 2) ** 1.1
