"""DP-SGD on the node: the plan for the whole run, the Opacus façade, the budget guard.

Privacy units (``privacy-unit``):

- ``user``: one Opacus sample is one user's interactions on the node. Per-sample
  clipping bounds what any one user adds to each noisy step, so the released
  global part is (epsilon, delta)-DP with respect to adding or removing one user
  of this node. User embedding rows are trained locally *without* noise in a
  separate phase: row u depends only on user u's data and on released global
  parameters, and is never released, so it costs no privacy (the billboard
  argument of Jain et al. 2021).
- ``interaction``: one sample is one interaction with its negatives; the whole
  local model, user embeddings included, is trained with DP-SGD (noise-free user
  rows would not be sound: a row aggregates many interactions). The guarantee is
  per interaction, which protects a user with m interactions only at ~m*epsilon.

The noise multiplier is planned once for the run: ``num-server-rounds`` rounds of
``local-epochs * (1 / sample_rate)`` Poisson-sampled steps must stay within
``target-epsilon`` at ``delta``. Before each round the guard adds this round's
planned steps to the node's persisted history and refuses if the budget would be
exceeded.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader

from client.dp_data import InteractionSamples, UserSamples, identity_collate
from client.trainer import TrainResult, TrainSettings, implicit_batches, make_criterion, make_optimizer
from shared.accounting import Segment, default_delta, epsilon, plan_noise
from shared.config import RunConfig
from shared.interactions import InteractionData
from shared.models.base import is_local


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


def plan_for(cfg: RunConfig, data: InteractionData) -> DPPlan:
    """Plan the noise so the whole run's planned steps meet (target-epsilon, delta)."""
    n_units = data.n_users if cfg.privacy_unit == "user" else data.n_train
    if n_units < 1:
        raise ValueError("a node needs data to train with DP")
    batch = max(1, round(cfg.dp_sample_rate * n_units))
    loader_len = math.ceil(n_units / batch)
    sample_rate = 1.0 / loader_len  # exactly what Opacus's Poisson loader uses
    steps_per_round = cfg.local_epochs * loader_len
    delta = cfg.delta or default_delta(n_units)
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


@dataclass(frozen=True)
class PrivateParts:
    """What Opacus's ``make_private`` returns in ghost mode, with a fixed shape."""

    module: torch.nn.Module
    optimizer: torch.optim.Optimizer
    criterion: torch.nn.Module
    loader: DataLoader


def make_private(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, loader: DataLoader, criterion: torch.nn.Module, *,
    noise_multiplier: float, clip_norm: float, noise_generator: torch.Generator,
) -> PrivateParts:
    """The one call into Opacus: Poisson sampling, ghost clipping, flat per-sample clipping."""
    from opacus import PrivacyEngine  # imported on first DP use: keeps evaluation-only processes small

    engine = PrivacyEngine(accountant="rdp")
    module, optimizer, criterion, loader = engine.make_private(
        module=model, optimizer=optimizer, data_loader=loader, criterion=criterion,
        noise_multiplier=noise_multiplier, max_grad_norm=clip_norm, poisson_sampling=True,
        grad_sample_mode="ghost", noise_generator=noise_generator,
    )
    return PrivateParts(module, optimizer, criterion, loader)


def train_user_embeddings(model: torch.nn.Module, data: InteractionData, s: TrainSettings, *, epochs: int,
                          lr: float, rng: np.random.Generator) -> None:
    """Noise-free local passes over the node's data updating only ``user_emb.*`` (user unit only)."""
    params = [p for n, p in model.named_parameters() if is_local(n)]
    frozen = [p for n, p in model.named_parameters() if not is_local(n)]
    for p in frozen:
        p.requires_grad_(False)
    optimizer = torch.optim.Adam(params, lr=lr)
    criterion = make_criterion(s)
    model.train()
    for _ in range(epochs):
        for users, items, targets in implicit_batches(data, s, rng):
            optimizer.zero_grad(set_to_none=True)
            criterion(model(users, items), targets).backward()
            optimizer.step()
    for p in frozen:
        p.requires_grad_(True)


def train_private(
    model: torch.nn.Module, data: InteractionData, s: TrainSettings, plan: DPPlan, cfg: RunConfig, *,
    rng: np.random.Generator, generator: torch.Generator,
) -> tuple[TrainResult, int]:
    """One round of DP training in place; returns the result and the number of DP steps taken."""
    start = time.perf_counter()
    model.train()
    if plan.unit == "user" and cfg.user_epochs:
        train_user_embeddings(model, data, s, epochs=cfg.user_epochs, lr=cfg.user_lr, rng=rng)
    private_locals = plan.unit != "user"
    for name, p in model.named_parameters():
        p.requires_grad_(private_locals or not is_local(name))
    if plan.unit == "user":
        dataset = UserSamples(data, max_interactions=cfg.dp_max_interactions, k=s.num_negatives, rng=rng)
    else:
        dataset = InteractionSamples(data, k=s.num_negatives, rng=rng)
    loader = DataLoader(dataset, batch_size=plan.batch_size, collate_fn=identity_collate, generator=generator)
    optimizer = make_optimizer(model, s)
    parts = make_private(model, optimizer, loader, make_criterion(s), noise_multiplier=plan.noise_multiplier,
                         clip_norm=plan.clip_norm, noise_generator=generator)
    parts.module.train()
    loss_sum, seen, steps = 0.0, 0, 0
    for _ in range(cfg.local_epochs):
        for users, items, targets, mask in parts.loader:
            if len(users) == 0:
                _noise_only_step(parts.optimizer, plan, generator)
            else:
                loss_sum += _clipped_sum_in_chunks(parts, (users, items, targets, mask), cfg.dp_chunk_pairs)
                parts.optimizer.step()  # adds the noise once, to the sum over the whole Poisson batch
                seen += len(users)
            parts.optimizer.zero_grad(set_to_none=True)
            steps += 1
    parts.module._close()  # detach Opacus's hooks and per-sample buffers from the model
    for p in model.parameters():
        p.requires_grad_(True)
    result = TrainResult(loss_sum / max(seen, 1), data.n_train, steps, time.perf_counter() - start)
    return result, steps


def _clipped_sum_in_chunks(parts: PrivateParts, batch: tuple[torch.Tensor, ...], chunk_pairs: int) -> float:
    """Leave the sum of per-sample clipped gradients of ``batch`` in ``p.grad``; return the summed loss.

    The logical (Poisson) batch is processed in physical chunks of about ``chunk_pairs`` scored pairs,
    so memory is bounded whatever the sampling rate. Opacus's ghost clipping resets ``p.grad`` inside each
    backward, so the chunks' clipped sums are accumulated here; the result is exactly the one-pass sum.
    """
    users = batch[0]
    size = max(1, chunk_pairs // max(batch[1].shape[1], 1))
    params = [p for p in parts.module.parameters() if p.requires_grad]
    total: list[torch.Tensor] | None = None
    loss_sum = 0.0
    for start in range(0, len(users), size):
        chunk = [t[start : start + size] for t in batch]
        loss = parts.criterion(parts.module(chunk[0], chunk[1]), chunk[2], chunk[3])
        loss.backward()
        loss_sum += loss.item() * len(chunk[0])
        grads = [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for p in params]
        total = grads if total is None else [a + g for a, g in zip(total, grads, strict=True)]
    for p, g in zip(params, total or [], strict=True):
        p.grad = g
    return loss_sum


def _noise_only_step(optimizer, plan: DPPlan, generator: torch.Generator) -> None:
    """An empty Poisson batch still releases a noisy step (sum of nothing + noise)."""
    expected = max(plan.batch_size, 1)
    for group in optimizer.original_optimizer.param_groups:
        for p in group["params"]:
            noise = torch.normal(0.0, plan.noise_multiplier * plan.clip_norm, p.shape, generator=generator)
            p.grad = noise / expected
    optimizer.original_optimizer.step()
