"""The run-long DP plan of one node and the prospective budget guard.

The noise multiplier is planned once for the run: ``federation.rounds`` rounds of
``local-epochs * (1 / sample_rate)`` Poisson-sampled steps must stay within
``dp.target-epsilon`` at ``dp.delta`` under the configured accountant (``prv`` by default,
Opacus's PRV accountant, the tightest available; ``rdp`` as an option). Before each
round the guard adds this round's planned steps to the node's persisted history and
refuses if the budget would be exceeded.

Mechanisms (``dp.mechanism``): ``local-sgd`` — each round the node runs DP-SGD locally
(``train.local-epochs`` of Poisson-sampled steps) and the coordinator averages the models;
``sgd`` — each round is one release: the node's clipped per-unit gradient sum over a
Poisson sample, noised, and the coordinator steps the global model on the sum over nodes.
With ``dp-frequency-share > 0`` the run starts with one DP item-frequency release
(:mod:`client.privacy.releases`) planned at that share of the budget; training gets the
rest, and is replanned once the coordinator has chosen the number of rounds.

Where the noise goes (``dp.noise``, releases of the ``sgd`` mechanism and the frequency
release): ``local`` — every node adds all of it (no one is trusted); ``central`` — the
coordinator adds it to the sum (the coordinator is trusted); ``distributed`` — every node
adds ``1/t`` of the variance under secure aggregation, ``t`` the number of nodes SecAgg+
needs to reveal a sum, so any revealed sum carries at least the planned noise (trusted:
SecAgg and at least ``t`` honest nodes).

With ``dp.row-threshold > 0`` each training release also selects the item rows it updates from noisy row
counts over the same sample (:mod:`shared.row_selection`); the pair is one Gaussian of the planned multiplier.

Privacy units (``dp.unit``): ``user`` — one sample is one user's interactions on
the node; ``interaction`` — one sample is one interaction with its negatives. ``dp.delta``
defaults to :func:`shared.accounting.default_delta` of the node's ``n`` units and is
never allowed above ``1/n``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

from shared.accounting import Segment, default_delta, epsilon, plan_noise, plan_noise_after
from shared.config import RunConfig
from shared.interactions import InteractionData
from shared.secure_sum import encoded_sensitivity, noise_share, quantization_levels, release_unit, sampled_nodes


class PlanError(ValueError):
    """A DP plan that cannot be made for this node (no data, delta above 1/n)."""


@dataclass(frozen=True)
class DPPlan:
    """The mechanisms a node runs in a run (fixed up front); every noise multiplier is relative to its sensitivity."""

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
    mechanism: str = "local-sgd"
    noise: str = "local"
    share: float = 1.0  # fraction of the planned noise variance this node adds itself
    frequency_multiplier: float = 0.0  # z of the DP item-frequency release (0: none)
    frequency_cap: int = 0  # items counted per user in it
    sensitivity: float = 0.0  # L2 sensitivity of one training release (0: clip_norm); SecAgg+ rounding included
    frequency_sensitivity: float = 0.0  # the same for the frequency release
    secagg_levels: int = 0  # distributed noise: the SecAgg+ quantization the sensitivities assume
    vote_multiplier: float = 0.0  # z of the floor vote (shared.floor_vote), set when the floor model is released
    participation: float = 1.0  # fraction of rounds the coordinator samples this node for (fraction-train)
    row_threshold: float = 0.0  # DP row selection (shared.row_selection): rows above threshold * z1 (0: off)
    row_selection_share: float = 0.0  # share f of 1/z^2 on the row counts: z1 = z/sqrt(f), z2 = z/sqrt(1-f)

    @property
    def multipliers(self) -> tuple[float, float]:
        """(z1, z2) of a gradient release with DP row selection: row counts and gradient; they compose to z."""
        from shared.row_selection import split_multiplier

        return split_multiplier(self.noise_multiplier, self.row_selection_share)

    @property
    def gradient_multiplier(self) -> float:
        """The noise multiplier on the gradient sum: z, or z2 with DP row selection."""
        return self.multipliers[1] if self.row_threshold > 0 else self.noise_multiplier

    @property
    def release_sensitivity(self) -> float:
        return self.sensitivity or self.clip_norm

    def segment(self, steps: int | None = None) -> Segment:
        return (self.noise_multiplier, self.sample_rate, self.steps_per_round if steps is None else steps)

    def frequency_segment(self) -> Segment:
        return (self.frequency_multiplier, 1.0, 1)

    def vote_segment(self) -> Segment:
        return (self.vote_multiplier, 1.0, 1)

    @property
    def participations(self) -> int:
        """Training rounds this node plans to take part in (see :func:`participations`)."""
        return participations(self.planned_rounds, self.participation)

    def schedule(self) -> list[Segment]:
        """Every release the run plans: the frequency release (if any), then every participation's steps."""
        head = [self.frequency_segment()] if self.frequency_multiplier > 0 else []
        return head + [self.segment()] * self.participations

    def as_dict(self) -> dict:
        return asdict(self)


def participations(rounds: int, fraction: float) -> int:
    """Rounds a node sampled at rate ``fraction`` takes part in, planned at the mean plus 3 standard deviations.

    A node spends privacy only in the rounds it trains in; the budget guard refuses any participation beyond
    the plan, so a node sampled unusually often stops early instead of exceeding its epsilon.
    """
    if fraction >= 1:
        return rounds
    return min(rounds, math.ceil(fraction * rounds + 3 * math.sqrt(rounds * fraction * (1 - fraction))))


def global_dims(cfg: RunConfig, n_items: int) -> int:
    """How many values the global part (one gradient release) has."""
    from shared.models import build_model, global_state

    return int(sum(t.numel() for t in global_state(build_model(cfg, 1, n_items)).values()))


def units_of(cfg: RunConfig, data: InteractionData) -> int:
    """How many privacy units (users or interactions) the node holds."""
    return data.n_users if cfg.dp.unit == "user" else data.n_train


def node_delta(cfg: RunConfig, n_units: int) -> float:
    """The node's delta: ``dp.delta`` if set, else the default; refused above ``1/n``."""
    delta = cfg.dp.delta or default_delta(n_units)
    if delta > 1.0 / n_units:
        raise PlanError(f"delta {delta:.3g} is above 1/n = {1.0 / n_units:.3g} for this node's {n_units} "
                        f"{cfg.dp.unit}s: a mechanism could then publish one {cfg.dp.unit} outright")
    return delta


def plan_for(cfg: RunConfig, data: InteractionData) -> DPPlan:
    """Plan the noise so the whole run's planned releases meet (target-epsilon, delta).

    With a frequency release, it gets ``dp.frequency-share`` of the budget on its own (one Gaussian at that
    epsilon) and training the rest, composed exactly: the training noise is the smallest that keeps the
    frequency release plus ``federation.rounds`` rounds within the target. :func:`replan` redoes the training
    part for the number of rounds the coordinator's recipe chose after the frequency release.
    """
    n_units = units_of(cfg, data)
    if n_units < 1:
        raise PlanError("a node needs data to train with DP")
    rate = 1.0 if cfg.dp.mechanism == "als" else cfg.dp.sample_rate  # an ALS pass uses every user
    batch = max(1, round(rate * n_units))
    loader_len = math.ceil(n_units / batch)
    sample_rate = 1.0 / loader_len  # exactly what Opacus's Poisson loader uses
    steps_per_round = cfg.train.local_epochs * loader_len if cfg.dp.mechanism == "local-sgd" else 1
    delta = node_delta(cfg, n_units)
    z_freq = 0.0
    if cfg.dp.frequency_share > 0 and cfg.dp.mechanism != "local-sgd":  # model averaging has no release round
        z_freq = plan_noise(cfg.dp.frequency_share * cfg.dp.target_epsilon, delta, 1.0, 1, cfg.dp.accountant)
    history = [(z_freq, 1.0, 1)] if z_freq else []
    z = plan_noise_after(history, cfg.dp.target_epsilon, delta, sample_rate,
                         steps_per_round * participations(cfg.federation.rounds, cfg.federation.fraction_train),
                         cfg.dp.accountant)
    unit = release_unit(cfg, "als" if cfg.dp.mechanism == "als" else "gradient")
    sensitivity, freq_sensitivity, levels = unit, math.sqrt(cfg.dp.frequency_cap + 1), 0
    if cfg.dp.noise == "distributed":  # what SecAgg+'s rounding adds to one node's encoded release
        if n_units > cfg.transport.secagg_max_users:
            raise PlanError(f"{n_units} {cfg.dp.unit}s exceed secagg-max-users {cfg.transport.secagg_max_users}")
        nodes = sampled_nodes(cfg)
        levels = quantization_levels(nodes)
        d = cfg.model.embedding_dim
        dims = data.n_items * (d * (d + 1) // 2 + d) + d * (d + 1) // 2 if cfg.dp.mechanism == "als" else \
            global_dims(cfg, data.n_items)
        sensitivity = encoded_sensitivity(unit, dims, cfg.transport.secagg_max_users, nodes)
        freq_sensitivity = encoded_sensitivity(freq_sensitivity, data.n_items + 1, cfg.transport.secagg_max_users,
                                               nodes)
    return DPPlan(cfg.dp.unit, z, sample_rate, batch, steps_per_round, cfg.federation.rounds, cfg.dp.clip_norm,
                  delta, cfg.dp.accountant, cfg.dp.target_epsilon, n_units, mechanism=cfg.dp.mechanism,
                  noise=cfg.dp.noise, share=noise_share(cfg), frequency_multiplier=z_freq,
                  frequency_cap=cfg.dp.frequency_cap if z_freq else 0, sensitivity=sensitivity,
                  frequency_sensitivity=freq_sensitivity if z_freq else 0.0, secagg_levels=levels,
                  participation=cfg.federation.fraction_train, row_threshold=cfg.dp.row_threshold,
                  row_selection_share=cfg.dp.row_selection_share if cfg.dp.row_threshold > 0 else 0.0)


def replan(plan: DPPlan, history: list[Segment], rounds: int) -> DPPlan:
    """The plan for ``rounds`` training rounds after what ``history`` spent (before any training release)."""
    z = plan_noise_after(history, plan.target_epsilon, plan.delta, plan.sample_rate,
                         plan.steps_per_round * participations(rounds, plan.participation), plan.accountant)
    return replace(plan, noise_multiplier=z, planned_rounds=rounds)


def refusal(history: list[Segment], plan: DPPlan, segment: Segment | None = None) -> str | None:
    """Why the next release (``segment``, default one round of training) must not run, or None."""
    after = epsilon([*history, segment or plan.segment()], plan.delta, plan.accountant)
    if after > plan.target_epsilon * (1 + 1e-9):
        spent = epsilon(history, plan.delta, plan.accountant)
        return (f"privacy budget: epsilon would reach {after:.4f} > target {plan.target_epsilon:g} "
                f"({plan.unit}-level, delta={plan.delta:.3g}, {plan.accountant}; spent {spent:.4f} "
                f"over {sum(s for _, _, s in history)} steps)")
    return None
