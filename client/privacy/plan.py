"""The run-long DP plan of one node and the prospective budget guard.

The noise multiplier is planned once for the run: ``num-server-rounds`` rounds of
``local-epochs * (1 / sample_rate)`` Poisson-sampled steps must stay within
``target-epsilon`` at ``delta`` under the configured accountant (``prv`` by default,
Opacus's PRV accountant, the tightest available; ``rdp`` as an option). Before each
round the guard adds this round's planned steps to the node's persisted history and
refuses if the budget would be exceeded.

Privacy units (``privacy-unit``): ``user`` — one sample is one user's interactions on
the node; ``interaction`` — one sample is one interaction with its negatives. ``delta``
defaults to :func:`shared.accounting.default_delta` of the node's ``n`` units and is
never allowed above ``1/n``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from shared.accounting import Segment, default_delta, epsilon, plan_noise
from shared.config import RunConfig
from shared.interactions import InteractionData


class PlanError(ValueError):
    """A DP plan that cannot be made for this node (no data, delta above 1/n)."""


@dataclass(frozen=True)
class DPPlan:
    """The mechanism a node runs every round of a run (fixed up front)."""

    unit: str
    noise_multiplier: float
    sample_rate: float
    batch_size: int
    steps_per_round: int
    planned_rounds: int
    clip_norm: float
    delta: float
    accountant: str
    target_epsilon: float
    n_units: int

    def segment(self, steps: int | None = None) -> Segment:
        return (self.noise_multiplier, self.sample_rate, self.steps_per_round if steps is None else steps)

    def as_dict(self) -> dict:
        return asdict(self)


def units_of(cfg: RunConfig, data: InteractionData) -> int:
    """How many privacy units (users or interactions) the node holds."""
    return data.n_users if cfg.privacy_unit == "user" else data.n_train


def node_delta(cfg: RunConfig, n_units: int) -> float:
    """The node's delta: ``delta`` if set, else the default; refused above ``1/n``."""
    delta = cfg.delta or default_delta(n_units)
    if delta > 1.0 / n_units:
        raise PlanError(f"delta {delta:.3g} is above 1/n = {1.0 / n_units:.3g} for this node's {n_units} "
                        f"{cfg.privacy_unit}s: a mechanism could then publish one {cfg.privacy_unit} outright")
    return delta


def plan_for(cfg: RunConfig, data: InteractionData) -> DPPlan:
    """Plan the noise so the whole run's planned steps meet (target-epsilon, delta)."""
    n_units = units_of(cfg, data)
    if n_units < 1:
        raise PlanError("a node needs data to train with DP")
    batch = max(1, round(cfg.dp_sample_rate * n_units))
    loader_len = math.ceil(n_units / batch)
    sample_rate = 1.0 / loader_len  # exactly what Opacus's Poisson loader uses
    steps_per_round = cfg.local_epochs * loader_len
    delta = node_delta(cfg, n_units)
    z = plan_noise(cfg.target_epsilon, delta, sample_rate, steps_per_round * cfg.num_server_rounds, cfg.accountant)
    return DPPlan(cfg.privacy_unit, z, sample_rate, batch, steps_per_round, cfg.num_server_rounds, cfg.clip_norm,
                  delta, cfg.accountant, cfg.target_epsilon, n_units)


def refusal(history: list[Segment], plan: DPPlan) -> str | None:
    """Why the next round must not run (prospective budget check), or None."""
    after = epsilon([*history, plan.segment()], plan.delta, plan.accountant)
    if after > plan.target_epsilon * (1 + 1e-9):
        spent = epsilon(history, plan.delta, plan.accountant)
        return (f"privacy budget: epsilon would reach {after:.4f} > target {plan.target_epsilon:g} "
                f"({plan.unit}-level, delta={plan.delta:.3g}, {plan.accountant}; spent {spent:.4f} "
                f"over {sum(s for _, _, s in history)} steps)")
    return None
