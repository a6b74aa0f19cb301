"""Encoding a noisy-sum release for SecAgg+, and what the encoding costs in sensitivity.

SecAgg+ (Flower) clips every value to ``[-8, 8]`` and rounds it stochastically to one of
``Q`` levels before masking; the coordinator gets the mean over the included nodes. A node
therefore divides its release by a public scale ``S`` (so the values stay inside the range:
``S = secagg-max-users * sensitivity / 8`` bounds any coordinate of a sum over at most
``transport.secagg-max-users`` units of vectors with that L2 norm), and the coordinator multiplies the
mean by ``k * S`` for ``k`` included nodes. Clipping to the range is 1-Lipschitz and adds no
sensitivity; rounding moves each of the ``d`` values of one node by less than one level, so
one unit changes that node's encoded vector by at most ``sensitivity + sqrt(d) * 16 S / Q``
in L2 — the sensitivity the node plans and records (:func:`encoded_sensitivity`). ``Q`` is
the largest power of two with ``(nodes + 1) * Q <= 2^32`` (the masking modulus), at most 2^30.
"""

from __future__ import annotations

import math

from shared import floor_vote
from shared.config import RunConfig

CLIPPING_RANGE = 8.0  # SecAggPlusWorkflow's default clipping range
MODULUS = 2**32


def quantization_levels(nodes: int) -> int:
    """Q: the finest quantization whose sum over ``nodes`` cannot wrap the 2^32 modulus."""
    return min(2**30, 2 ** math.floor(math.log2(MODULUS / (max(nodes, 1) + 1))))


def scale(max_units: int, sensitivity: float) -> float:
    """S: dividing by it keeps a sum over ``max_units`` units of norm-``sensitivity`` vectors within [-8, 8]."""
    return max_units * sensitivity / CLIPPING_RANGE


def encoded_sensitivity(sensitivity: float, dims: int, max_units: int, nodes: int) -> float:
    """The L2 sensitivity of one node's SecAgg+ encoding of its release (rounding included)."""
    step = 2 * CLIPPING_RANGE * scale(max_units, sensitivity) / quantization_levels(nodes)
    return sensitivity + math.sqrt(dims) * step


def release_unit(cfg, release: str) -> float:
    """The L2 bound of one unit's contribution to a release (before noise): what the scale S is sized by."""
    if release == "frequency":
        return math.sqrt(cfg.dp.frequency_cap + 1)
    if release == floor_vote.VOTE:
        return floor_vote.sensitivity()
    if release == "als":
        return math.sqrt(2 * cfg.dp.max_interactions + 1)
    return cfg.dp.clip_norm


def sampled_nodes(cfg: RunConfig) -> int:
    """Nodes the coordinator samples per round as planned (SecAgg+ needs at least two)."""
    return max(2, math.ceil(cfg.federation.fraction_train * cfg.federation.min_nodes))


def noise_share(cfg: RunConfig) -> float:
    """Fraction of the noise variance one node adds for ``dp.noise`` (distributed: 1/t at the SecAgg threshold)."""
    if cfg.dp.noise == "local":
        return 1.0
    if cfg.dp.noise == "central":
        return 0.0
    return 1.0 / max(1, math.ceil(cfg.transport.secagg_threshold * sampled_nodes(cfg)))


def vote_sensitivity(noise: str, cfg: RunConfig) -> float:
    """L2 sensitivity of the floor vote under ``noise`` (distributed: SecAgg+ rounding included)."""
    if noise != "distributed":
        return floor_vote.sensitivity()
    return encoded_sensitivity(floor_vote.sensitivity(), len(floor_vote.WEIGHTS) - 1, cfg.transport.secagg_max_users,
                               sampled_nodes(cfg))
