"""DP-SGD on the node (Opacus): the one call into Opacus and one private local round.

Per-sample (per privacy unit) clipping by Opacus's ghost clipping over Poisson-sampled
batches; the Gaussian noise is added once per step to the clipped sum, drawn from the
round's :class:`~shared.secret_random.SecretRandomness` (a ChaCha20 keystream from fresh
OS entropy), never from a generator the coordinator could rebuild. With the user unit,
user embedding rows are first fitted locally without noise: row u depends only on user
u's data and on released global parameters and is never released (the billboard argument
of Jain et al. 2021); the global part then gets DP-SGD.
"""

from __future__ import annotations

import time
import types
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader

from client.privacy.plan import DPPlan
from client.privacy.samples import InteractionSamples, UserSamples, identity_collate
from client.trainer import TrainResult, TrainSettings, make_criterion, make_optimizer, train_user_rows
from shared.config import RunConfig
from shared.interactions import InteractionData
from shared.models.base import is_local
from shared.secret_random import SecretRandomness


@dataclass(frozen=True)
class PrivateParts:
    """What Opacus's ``make_private`` returns in ghost mode, with a fixed shape."""

    module: torch.nn.Module
    optimizer: torch.optim.Optimizer
    criterion: torch.nn.Module
    loader: DataLoader


def make_private(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, loader: DataLoader, criterion: torch.nn.Module, *,
    noise_multiplier: float, clip_norm: float, randomness: SecretRandomness | None,
) -> PrivateParts:
    """The one call into Opacus: Poisson sampling (the loader's generator), ghost clipping, flat clipping.

    Noise of std ``noise_multiplier * clip_norm`` is added to each step's clipped sum from ``randomness``
    (required when ``noise_multiplier > 0``; Opacus's own torch-generator noise is never used).
    """
    from opacus import PrivacyEngine  # imported on first DP use: keeps evaluation-only processes small

    from client.privacy.norms import install

    install()  # the per-sample norms of Linear and Embedding layers, computed with less work
    if noise_multiplier > 0 and randomness is None:
        raise ValueError("DP noise needs a secret randomness source")
    engine = PrivacyEngine(accountant="rdp")  # its accountant is unused: fedrec keeps the node's own account
    module, optimizer, criterion, loader = engine.make_private(
        module=model, optimizer=optimizer, data_loader=loader, criterion=criterion,
        noise_multiplier=noise_multiplier, max_grad_norm=clip_norm, poisson_sampling=True,
        grad_sample_mode="ghost",
    )
    optimizer.add_noise = types.MethodType(_secret_add_noise(randomness), optimizer)
    return PrivateParts(module, optimizer, criterion, loader)


def _secret_add_noise(randomness: SecretRandomness | None):
    """Opacus's ``add_noise`` (clipped sum + N(0, (z C)^2) into ``p.grad``) with the noise from ``randomness``."""
    from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed

    def add_noise(optimizer) -> None:
        std = optimizer.noise_multiplier * optimizer.max_grad_norm
        for p in optimizer.params:
            _check_processed_flag(p.summed_grad)
            noise = randomness.gaussian(p.summed_grad.shape, std, p.summed_grad.dtype) if std > 0 else 0.0
            p.grad = (p.summed_grad + noise).view_as(p)
            _mark_as_processed(p.summed_grad)

    return add_noise


def train_private(
    model: torch.nn.Module, data: InteractionData, s: TrainSettings, plan: DPPlan, cfg: RunConfig, *,
    randomness: SecretRandomness,
) -> tuple[TrainResult, int]:
    """One round of DP training in place; returns the result and the number of DP steps taken.

    Every random choice of the round (user rows' pass, interaction subsampling, negatives, Poisson
    sampling, noise) comes from ``randomness``.
    """
    start = time.perf_counter()
    model.train()
    rng = randomness.numpy
    if plan.unit == "user" and cfg.train.user_epochs:
        train_user_rows(model, data, s, epochs=cfg.train.user_epochs, lr=cfg.train.user_lr, rng=rng)
    private_locals = plan.unit != "user"
    for name, p in model.named_parameters():
        p.requires_grad_(private_locals or not is_local(name))
    if plan.unit == "user":
        dataset = UserSamples(data, max_interactions=cfg.dp.max_interactions, k=s.num_negatives, rng=rng)
    else:
        dataset = InteractionSamples(data, k=s.num_negatives, rng=rng)
    loader = DataLoader(dataset, batch_size=plan.batch_size, collate_fn=identity_collate,
                        generator=randomness.torch)
    optimizer = make_optimizer(model, s)
    parts = make_private(model, optimizer, loader, make_criterion(s), noise_multiplier=plan.noise_multiplier,
                         clip_norm=plan.clip_norm, randomness=randomness)
    parts.module.train()
    loss_sum, seen, steps = 0.0, 0, 0
    for _ in range(cfg.train.local_epochs):
        for users, items, targets, mask in parts.loader:
            if len(users) == 0:
                _noise_only_step(parts.optimizer, plan, randomness)
            else:
                loss_sum += _clipped_sum_in_chunks(parts, (users, items, targets, mask), s.chunk_pairs)
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


def _noise_only_step(optimizer, plan: DPPlan, randomness: SecretRandomness) -> None:
    """An empty Poisson batch still releases a noisy step (sum of nothing + noise)."""
    expected = max(plan.batch_size, 1)
    for group in optimizer.original_optimizer.param_groups:
        for p in group["params"]:
            p.grad = randomness.gaussian(p.shape, plan.noise_multiplier * plan.clip_norm, p.dtype) / expected
    optimizer.original_optimizer.step()
