"""Local training in plain PyTorch (no Flower, no Opacus here).

Implicit task: each sample is one training positive with ``k`` fresh negatives
drawn uniformly from the catalog among items the user has not interacted with
in training (BCE). Explicit task: each sample is one rating (MSE on
``lo + (hi-lo)·σ(logit)``). Batches come from a NumPy generator the caller
derives from (seed, node, round), so training is deterministic.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from client.optimizers import SGD, Adam
from shared.config import RunConfig
from shared.interactions import InteractionData
from shared.losses import PerSampleBCE, PerSampleMSE
from shared.models.base import is_local

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class TrainSettings:
    """What the trainer needs from the run config."""

    task: str = "implicit"
    num_negatives: int = 4
    batch_size: int = 256
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    value_range: tuple[float, float] = (1.0, 5.0)
    item_lr: float | None = None  # None: lr; 0: item embeddings frozen
    bias_lr: float | None = None  # None: lr (item-bias table)
    chunk_pairs: int = 8192  # node-local memory bound of a DP step: scored pairs per physical chunk
    negative_pool: str = "train"  # "unseen": the anchors' protocol, never the held-out items (non-private only)
    negative_candidates: int = 0  # > 0: a call's negatives come from this many items drawn once (bounds touched rows)

    @classmethod
    def from_config(cls, cfg: RunConfig, value_range: tuple[float, float] = (1.0, 5.0), *,
                    chunk_pairs: int = 8192) -> TrainSettings:
        return cls(
            chunk_pairs=chunk_pairs,
            task=cfg.model.task,
            num_negatives=cfg.train.negatives,
            batch_size=cfg.train.batch_size,
            optimizer=cfg.train.optimizer,
            lr=cfg.train.lr,
            weight_decay=cfg.train.weight_decay,
            value_range=value_range,
            item_lr=0.0 if cfg.train.freeze_items else (cfg.train.item_lr or None),
            bias_lr=cfg.train.bias_lr or None,
            negative_pool=cfg.train.negative_pool,
            negative_candidates=cfg.train.negative_candidates,
        )


@dataclass(frozen=True)
class TrainResult:
    """Outcome of local training: mean per-sample loss over all steps."""

    loss: float
    num_examples: int
    steps: int
    seconds: float


def make_optimizer(model: nn.Module, s: TrainSettings) -> torch.optim.Optimizer:
    """Adam or SGD (momentum 0.9) with L2 weight decay over ``model``'s trainable parameters.

    Per-group learning rates: item embedding tables get ``item_lr`` and the item bias
    ``bias_lr`` when set; with ``item_lr == 0`` the item tables are frozen
    (``requires_grad`` off, so DP-SGD neither clips nor noises them).
    """
    items, bias, rest = [], [], []
    for name, p in model.named_parameters():
        if name.startswith("item_emb.") and s.item_lr == 0:
            p.requires_grad_(False)
        if p.requires_grad:
            (items if name.startswith("item_emb.") else bias if name.startswith("item_bias.") else rest).append(p)
    groups = [g for g in ({"params": rest}, {"params": items, "lr": s.item_lr or s.lr},
                          {"params": bias, "lr": s.bias_lr or s.lr}) if g["params"]]
    if s.optimizer == "adam":
        return Adam(groups, lr=s.lr, weight_decay=s.weight_decay)
    return SGD(groups, lr=s.lr, momentum=0.9, weight_decay=s.weight_decay)


def make_criterion(s: TrainSettings, reduction: str = "mean") -> nn.Module:
    """The per-sample criterion of the task."""
    if s.task == "implicit":
        return PerSampleBCE(reduction)
    return PerSampleMSE(*s.value_range, reduction=reduction)


class NegativeSampler:
    """Uniform negatives that are not in the user's training set.

    Rejection sampling against the sorted keys ``user * n_items + item`` of the
    training CSR (sorted by user, then item). After ``max_tries`` redraws any
    remaining collision is kept (only possible for users who saw almost everything).

    ``candidates`` (item indices) restricts the draws to those items, uniformly: the rows a training call
    touches are then its positives plus ``candidates``, whatever the catalog's size.

    ``held_out=True`` also rejects each user's validation and test items: the protocol of PFedRec's code
    (and GPFedRec's, which uses the same sampler): negatives from "all items the user never interacted
    with". It tells training which items are held out, so their scores are never pushed down: figures
    under it are only comparable with those papers, not an honest estimate.
    """

    def __init__(self, data: InteractionData, *, max_tries: int = 8, held_out: bool = False,
                 candidates: np.ndarray | None = None) -> None:
        self.n_items = data.n_items
        self.candidates = candidates
        self.keys = data.train_users().astype(np.int64) * data.n_items + data.train_items  # sorted: CSR order
        if held_out:
            rows = np.arange(data.n_users, dtype=np.int64)
            extra = [rows[h >= 0] * data.n_items + h[h >= 0] for h in (data.val_item, data.test_item)]
            self.keys = np.unique(np.concatenate([self.keys, *extra]))
        self.max_tries = max_tries

    def __call__(self, users: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
        """(len(users), k) item indices."""
        keys, n_items = self.keys, self.n_items
        neg = self._draw(rng, (len(users), k))
        if not len(keys):
            return neg
        for _ in range(self.max_tries):
            probe = users[:, None].astype(np.int64) * n_items + neg
            hit = keys[np.searchsorted(keys, probe).clip(max=len(keys) - 1)] == probe
            if not hit.any():
                break
            neg[hit] = self._draw(rng, int(hit.sum()))
        return neg

    def _draw(self, rng: np.random.Generator, size: int | tuple[int, int]) -> np.ndarray:
        if self.candidates is None:
            return rng.integers(0, self.n_items, size=size)
        return self.candidates[rng.integers(0, len(self.candidates), size=size)]


def sample_negatives(data: InteractionData, users: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """One-off :class:`NegativeSampler` call (build the sampler once when calling repeatedly)."""
    return NegativeSampler(data)(users, k, rng)


def training_sampler(data: InteractionData, s: TrainSettings, rng: np.random.Generator) -> NegativeSampler:
    """The negative sampler of one training call: ``s.negative_candidates`` distinct items drawn from ``rng``
    once (all items when 0 or at least the catalog), and the pool ``s.negative_pool`` names."""
    n = s.negative_candidates
    candidates = np.sort(rng.choice(data.n_items, size=n, replace=False)) if 0 < n < data.n_items else None
    return NegativeSampler(data, held_out=s.negative_pool == "unseen", candidates=candidates)


def implicit_batches(data: InteractionData, s: TrainSettings, rng: np.random.Generator,
                     sampler: NegativeSampler | None = None) -> Iterator[Batch]:
    """Shuffled (users (B,), items (B, 1+k), targets (B, 1+k)) over every training positive."""
    users_all = data.train_users()
    sampler = sampler or training_sampler(data, s, rng)
    order = rng.permutation(data.n_train)
    for start in range(0, len(order), s.batch_size):
        idx = order[start : start + s.batch_size]
        users = users_all[idx]
        negs = sampler(users, s.num_negatives, rng)
        items = np.concatenate([data.train_items[idx, None], negs], axis=1)
        targets = np.zeros(items.shape, np.float32)
        targets[:, 0] = 1.0
        yield torch.from_numpy(users), torch.from_numpy(items), torch.from_numpy(targets)


def explicit_batches(data: InteractionData, s: TrainSettings, rng: np.random.Generator) -> Iterator[Batch]:
    """Shuffled (users (B,), items (B, 1), ratings (B, 1))."""
    users_all = data.train_users()
    order = rng.permutation(data.n_train)
    for start in range(0, len(order), s.batch_size):
        idx = order[start : start + s.batch_size]
        yield (
            torch.from_numpy(users_all[idx]),
            torch.from_numpy(data.train_items[idx, None]),
            torch.from_numpy(data.train_values[idx, None]),
        )


def batches(data: InteractionData, s: TrainSettings, rng: np.random.Generator,
            sampler: NegativeSampler | None = None) -> Iterator[Batch]:
    """The task's batch stream for one epoch."""
    return implicit_batches(data, s, rng, sampler) if s.task == "implicit" else explicit_batches(data, s, rng)


def train_epochs(
    model: nn.Module,
    data: InteractionData,
    s: TrainSettings,
    *,
    epochs: int,
    rng: np.random.Generator,
    optimizer: torch.optim.Optimizer | None = None,
    proximal: tuple[float, dict[str, torch.Tensor]] | None = None,
) -> TrainResult:
    """Train ``model`` in place for ``train.epochs`` passes over ``data``'s training interactions.

    ``proximal=(mu, anchor)`` adds FedProx's ``mu/2 * ||w - w_anchor||^2`` over the
    anchored (global) parameters.
    """
    start = time.perf_counter()
    optimizer = optimizer or make_optimizer(model, s)
    criterion = make_criterion(s)
    model.train()
    loss_sum, seen, steps = 0.0, 0, 0
    anchored = []
    if proximal is not None:
        params = dict(model.named_parameters())
        anchored = [(params[k], v) for k, v in proximal[1].items() if k in params]
    sampler = training_sampler(data, s, rng) if s.task == "implicit" else None  # one candidate pool per call
    for _ in range(epochs):
        for users, items, targets in batches(data, s, rng, sampler):
            optimizer.zero_grad(set_to_none=True)
            data_loss = criterion(model(users, items), targets)
            loss = data_loss
            if anchored:
                loss = loss + proximal[0] / 2 * sum(((p - a) ** 2).sum() for p, a in anchored)
            loss.backward()
            optimizer.step()
            loss_sum += data_loss.item() * len(users)
            seen += len(users)
            steps += 1
    return TrainResult(
        loss=loss_sum / max(seen, 1),
        num_examples=data.n_train,
        steps=steps,
        seconds=time.perf_counter() - start,
    )


TOL_BLOCK_STEPS = 100  # train_user_rows(tol=...): optimizer steps per convergence check, at least


def train_user_rows(model: nn.Module, data: InteractionData, s: TrainSettings, *, epochs: int, lr: float,
                    rng: np.random.Generator, tol: float | None = None) -> int:
    """Noise-free local passes over the node's data updating only ``user_emb.*``, the global part frozen.

    FedRecon's user phase: used before each round's training, before evaluation and serving (on a copy),
    and under the user unit of DP (user rows are never released, so this costs no privacy). With ``tol``,
    ``epochs`` is a cap: the passes stop once a block's mean training loss improves on the previous block's by
    less than ``tol`` (relative); a block is whole passes of at least ``TOL_BLOCK_STEPS`` optimizer steps, so a
    small node is not judged on a few noisy steps. It reads the node's training data only. Returns the passes.
    """
    params = [p for n, p in model.named_parameters() if is_local(n)]
    frozen = [p for n, p in model.named_parameters() if not is_local(n)]
    for p in frozen:
        p.requires_grad_(False)
    optimizer = Adam(params, lr=lr)
    criterion = make_criterion(s)
    model.train()
    sampler = training_sampler(data, s, rng)  # one negative pool for the whole fit, as in train_epochs
    previous, done, total, steps = math.inf, 0, 0.0, 0
    while done < epochs:
        for users, items, targets in implicit_batches(data, s, rng, sampler):
            optimizer.zero_grad(set_to_none=True)
            loss = criterion(model(users, items), targets)
            loss.backward()
            optimizer.step()
            if tol is not None:
                total, steps = total + loss.item(), steps + 1
        done += 1
        if tol is not None and steps >= TOL_BLOCK_STEPS:  # a small node's passes are pooled into one block
            mean, total, steps = total / steps, 0.0, 0
            if previous - mean < tol * abs(previous):
                break
            previous = mean
    for p in frozen:
        p.requires_grad_(True)
    return done
