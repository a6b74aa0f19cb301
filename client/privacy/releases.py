"""A node's share of a noisy-sum release: DP item counts, or one clipped-gradient sum of DP-SGD.

Both are sums over the node's privacy units of a per-unit contribution with bounded L2 norm
(the sensitivity), plus this node's share of Gaussian noise of std ``z * sensitivity``
(:func:`add_share`): all of it (``dp.noise = local``), none (``central``: the coordinator adds
it) or ``1/t`` of its variance (``distributed``, under secure aggregation). Summed over the
nodes — in the clear or securely — the release is one Gaussian mechanism per user.

- :func:`frequency_release`: every user contributes a 0/1 indicator of at most ``k`` of its
  training items (drawn at random, secretly) plus a 1 in a last coordinate that counts users;
  L2 sensitivity ``sqrt(k + 1)``. It yields DP popularity, DP item biases and the DP user count
  that normalizes the gradient of the ``sgd`` mechanism.
- :func:`vote_release`: each user's HR@10 differences at the floor model's candidate user weights
  (:mod:`shared.floor_vote`), L2 sensitivity ``sqrt(m - 1)``.
- :func:`gradient_release`: Poisson-sampled users (rate ``q``), Opacus ghost clipping of each
  user's gradient of the global part to ``dp.clip-norm``, summed (not averaged): the coordinator
  divides by ``q`` times the DP user count. With ``dp.row-threshold > 0`` (:mod:`shared.row_selection`) the
  item tables' rows outside the DP-selected set carry neither gradient nor noise; under central noise the raw
  row counts go to the coordinator with the sum (key ``row-counts``), which adds their noise and selects.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np
import torch
from torch.utils.data import DataLoader

from client.privacy.dpsgd import _clipped_sum_in_chunks, make_private
from client.privacy.plan import DPPlan
from client.privacy.samples import InteractionSamples, UserSamples, identity_collate
from client.trainer import TrainSettings, make_criterion, make_optimizer
from shared import floor_vote, metrics, secure_sum, splits
from shared.config import RunConfig
from shared.evaluation import sampled_ranks
from shared.interactions import InteractionData
from shared.models.base import is_local
from shared.row_selection import COUNTS, is_item_table, row_contributions, selected_rows
from shared.secret_random import SecretRandomness

FREQUENCY = "frequency"
GRADIENT = "gradient"


def add_share(values: torch.Tensor, std: float, plan: DPPlan, randomness: SecretRandomness) -> torch.Tensor:
    """``values`` plus this node's share of N(0, std^2): std * sqrt(share) (0 under central noise)."""
    if plan.share <= 0 or std <= 0:
        return values
    return values + randomness.gaussian(values.shape, std * math.sqrt(plan.share), values.dtype)


def frequency_sensitivity(plan: DPPlan) -> float:
    """L2 sensitivity of the frequency release as planned (SecAgg+ rounding included under distributed noise)."""
    return plan.frequency_sensitivity or math.sqrt(plan.frequency_cap + 1)


def frequency_release(data: InteractionData, plan: DPPlan, randomness: SecretRandomness) -> torch.Tensor:
    """(n_items + 1,) float64: capped item counts of this node's users, then its user count, plus noise."""
    k = plan.frequency_cap
    counts = np.zeros(data.n_items + 1, np.float64)
    for u in range(data.n_users):
        own = data.train_items[data.train_indptr[u] : data.train_indptr[u + 1]]
        if len(own) > k:
            own = randomness.numpy.choice(own, size=k, replace=False)
        counts[own] += 1.0
    counts[-1] = data.n_users
    std = plan.frequency_multiplier * frequency_sensitivity(plan)
    return add_share(torch.from_numpy(counts), std, plan, randomness)


def _row_selection(items: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor, n_items: int, plan: DPPlan,
                   randomness: SecretRandomness) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """DP row selection (:mod:`shared.row_selection`): (selected rows, None) when this node adds the noise itself,
    (None, raw row counts) under central noise (the coordinator adds it and selects), (None, None) when off."""
    if plan.row_threshold <= 0:
        return None, None
    counts = torch.from_numpy(row_contributions(items.numpy(), targets.numpy(), mask.numpy(), n_items))
    if plan.share <= 0:
        return None, counts
    z1 = plan.multipliers[0]
    noisy = add_share(counts, z1, plan, randomness)
    return torch.from_numpy(selected_rows(noisy.numpy(), plan.row_threshold, z1)), None


def gradient_release(model: torch.nn.Module, data: InteractionData, s: TrainSettings, plan: DPPlan,
                     cfg: RunConfig, randomness: SecretRandomness) -> OrderedDict[str, torch.Tensor]:
    """Sum over Poisson-sampled units of their clipped gradients of the global part, plus this node's noise share.

    Keyed like the global part; parameters that are not trained (frozen item tables) come back as zeros.
    """
    names = [n for n, p in model.named_parameters() if not is_local(n)]
    for name, p in model.named_parameters():
        p.requires_grad_(plan.unit != "user" or not is_local(name))
    rng = randomness.numpy
    if plan.unit == "user":
        dataset = UserSamples(data, max_interactions=cfg.dp.max_interactions, k=s.num_negatives, rng=rng)
    else:
        dataset = InteractionSamples(data, k=s.num_negatives, rng=rng)
    loader = DataLoader(dataset, batch_size=plan.batch_size, collate_fn=identity_collate, generator=randomness.torch)
    optimizer = make_optimizer(model, s)  # only its parameter list matters: nothing is stepped here
    parts = make_private(model, optimizer, loader, make_criterion(s), noise_multiplier=0.0,
                         clip_norm=plan.clip_norm, randomness=None)
    parts.module.train()
    users, items, targets, mask = next(iter(parts.loader))
    if len(users):
        _clipped_sum_in_chunks(parts, (users, items, targets, mask), s.chunk_pairs)
    rows, counts = _row_selection(items, targets, mask, data.n_items, plan, randomness)
    params = dict(model.named_parameters())
    std = plan.gradient_multiplier * plan.release_sensitivity
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for key, value in model.state_dict().items():
        if is_local(key):
            continue
        grad = params[key].grad if key in params and params[key].requires_grad else None
        clipped = grad.detach().clone() if grad is not None else torch.zeros_like(value)
        if key not in names:
            out[key] = clipped
        elif rows is not None and is_item_table(key):  # noise on the selected rows only, the others zero
            clipped[~rows] = 0
            clipped[rows] = add_share(clipped[rows], std, plan, randomness)
            out[key] = clipped
        else:
            out[key] = add_share(clipped, std, plan, randomness)
    if counts is not None:
        out[COUNTS] = counts
    parts.module._close()
    for p in model.parameters():
        p.requires_grad_(True)
        p.grad = None
    return out


@torch.no_grad()
def vote_release(model: torch.nn.Module, data: InteractionData, plan: DPPlan, cfg: RunConfig,
                 randomness: SecretRandomness) -> torch.Tensor:
    """``(m - 1,)`` float64: the floor vote (:mod:`shared.floor_vote`) of this node's users, plus its noise share.

    ``model`` is the floor model with the user rows fitted at weight 1; each candidate weight scales its output
    layer, and every user with a validation item scores its sampled HR@``eval.top-k`` at each.
    """
    unit = model.out.weight.detach().clone()
    hits = []
    for weight in floor_vote.WEIGHTS:
        model.out.weight.copy_(weight * unit)
        hits.append(metrics.hit_rate(sampled_ranks(model, data, splits.VAL), cfg.eval.top_k))
    model.out.weight.copy_(unit)
    sums = torch.from_numpy(floor_vote.contribution(np.stack(hits, axis=1)))
    return add_share(sums, plan.vote_multiplier * secure_sum.vote_sensitivity(plan.noise, cfg), plan, randomness)
