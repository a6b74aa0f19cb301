"""One node's round work in plain PyTorch: merge, train, evaluate. No Flower here.

A :class:`LocalNode` owns the node's :class:`InteractionData` and builds a
model for its users. ``train_round`` merges the received global part with the
node's user embeddings, trains locally and returns the new global part and the
new local part separately: the caller stores the local part and sends only the
global part.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from dataclasses import dataclass, replace

import numpy as np
import torch

from client import personal
from client.privacy import DPPlan, train_private
from client.trainer import TrainResult, TrainSettings, make_optimizer, train_epochs, train_user_rows
from shared import floor_vote, splits
from shared.config import RunConfig
from shared.evaluation import evaluate_ranking, evaluate_rating
from shared.floor_vote import unit_weight
from shared.interactions import InteractionData
from shared.models import build_model, global_state, local_state, merge_state
from shared.secret_random import SecretRandomness
from shared.secure_sum import vote_sensitivity
from shared.seeding import numpy_rng, torch_seed

Tensors = OrderedDict[str, torch.Tensor]


def refit_user_rows(model: torch.nn.Module, cfg: RunConfig, data: InteractionData, *, rng) -> None:
    """``eval.user-epochs`` noise-free passes over ``model``'s user rows with the global part frozen.

    FedRecon's evaluation step, used before evaluating and before serving, on the caller's model copy only.
    A no-op for ``eval.user-epochs = 0`` and for the explicit task.
    """
    if cfg.eval.user_epochs and cfg.model.task == "implicit":
        train_user_rows(model, data, TrainSettings.from_config(cfg), epochs=cfg.eval.user_epochs,
                              lr=cfg.train.user_lr, rng=rng)
        model.eval()


# A never-trained node (a DP run that released its floor model) fits its user rows before it evaluates or serves:
# noise-free passes until a block's (>= 100 steps) mean training loss improves by less than FIT_TOL (relative),
# at most FIT_EPOCHS passes.
# A fixed 5 passes left them far from fitted on an ML-1M silo (Adam steps per pass scale with the node's data):
# the floor model's test HR@10 was 0.436 after 5 passes, 0.492 at convergence (14-22 passes per silo).
# Adam at FIT_LR, not train.user-lr (0.01): ML-1M 10 silos, epsilon 1, one released floor model (public genre and
# release-period vectors): the rows fitted at 0.01 gave test HR@10 0.536 at user weight 0.5, 10-12 more passes at
# 0.05 0.556, one fit over all 6,040 users in one process (10x the Adam steps a pass) 0.565; a run fitting at 0.05
# served 0.562 (docs/reference/results.md).
# A small node (one user: a pass is one Adam step) gets at least FIT_STEPS steps (fit_passes): ML-100K, one user per
# node, epsilon 8, 50 steps left the rows under-fitted (the DP vote kept popularity, test HR@10 0.444); 200 steps:
# the vote served a = 0.75, 0.494 (full-rank 0.073 against popularity's 0.084); the 943 fits took 3 min 21 s in one
# process (0.21 s a node; 50 steps: 1-2 min). 1,000 steps took over 10 minutes and was stopped.
FIT_EPOCHS = 50
FIT_STEPS = 200
FIT_TOL = 1e-3
FIT_LR = 0.05


def fit_passes(n_train: int, batch_size: int) -> int:
    """The cap on the floor fit's passes: FIT_EPOCHS, or enough passes for FIT_STEPS Adam steps on a small node."""
    return max(FIT_EPOCHS, math.ceil(FIT_STEPS / max(1, math.ceil(n_train / batch_size))))


def fit_floor_rows(model: torch.nn.Module, data: InteractionData, settings: TrainSettings,
                   rng: np.random.Generator) -> int:
    """The floor fit: ``model``'s user rows trained on ``data`` (global part frozen, noise-free) at FIT_LR until the
    FIT_TOL rule stops them, at most :func:`fit_passes` passes. Returns the passes run."""
    return train_user_rows(model, data, settings, epochs=fit_passes(data.n_train, settings.batch_size), lr=FIT_LR,
                           rng=rng, tol=FIT_TOL)


@dataclass(frozen=True)
class RoundOutcome:
    """What a training round produced."""

    global_part: Tensors
    local_part: Tensors
    result: TrainResult


class LocalNode:
    """A node's data plus the config to train and evaluate on it."""

    def __init__(self, cfg: RunConfig, data: InteractionData, value_range: tuple[float, float], node_key: str, *,
                 chunk_pairs: int = 8192) -> None:
        self.cfg = cfg
        self.data = data
        self.value_range = value_range
        self.node_key = node_key
        self.settings = TrainSettings.from_config(cfg, value_range, chunk_pairs=chunk_pairs)

    def fresh_local(self) -> Tensors:
        """Initial user embeddings, derived from (seed, node)."""
        with torch_seed(self.cfg.seed, "user-emb", self.node_key):
            model = build_model(self.cfg, max(self.data.n_users, 1), self.data.n_items)
        return local_state(model)

    def model(
        self, global_part: dict[str, torch.Tensor], local_part: dict[str, torch.Tensor] | None, *,
        personal_view: bool = False,
    ) -> torch.nn.Module:
        """A model holding the global part and this node's user embeddings.

        ``personal_view``: with ``model.personalization = "dual"`` the global part is shifted by the node's
        stored personal offsets first (:mod:`client.personal`): the model this node evaluates and serves with.
        """
        users, offsets = personal.split(local_part)
        if personal_view and self.cfg.model.personalization == "dual":
            global_part = personal.view(global_part, offsets)
        with torch_seed(self.cfg.seed, "model-shell", self.node_key):
            model = build_model(self.cfg, max(self.data.n_users, 1), self.data.n_items)
        merge_state(model, global_part=global_part, local_part=users or self.fresh_local())
        return model

    def settings_at(self, server_round: int) -> TrainSettings:
        """This round's training settings: ``train.lr-decay ** (round - 1)`` times every local learning rate."""
        factor = self.cfg.train.lr_decay ** max(server_round - 1, 0)
        s = self.settings
        if factor == 1.0:
            return s
        return replace(s, lr=s.lr * factor, item_lr=s.item_lr and s.item_lr * factor,
                       bias_lr=s.bias_lr and s.bias_lr * factor)

    def _kept(self, model: torch.nn.Module, received: dict[str, torch.Tensor], old: Tensors) -> Tensors:
        """What the node stores after training: its user rows and (``dual``) its new personal offsets."""
        kept = local_state(model)
        if self.cfg.model.personalization == "dual":
            return kept | personal.offsets(global_state(model), received)
        return kept | old

    def train_round(
        self, global_part: dict[str, torch.Tensor], local_part: dict[str, torch.Tensor] | None, server_round: int,
        *, proximal_mu: float = 0.0, plan: DPPlan | None = None,
    ) -> RoundOutcome:
        """``train.local-epochs`` of training on this node (DP-SGD when ``plan``).

        Non-private rounds draw from (seed, node, round) and are reproducible; DP rounds draw every random
        choice from fresh OS entropy (:class:`~shared.secret_random.SecretRandomness`), so nobody holding the
        run config can regenerate the noise or the sampled batches.
        """
        model = self.model(global_part, local_part)
        old = personal.split(local_part)[1]
        settings = self.settings_at(server_round)
        start = time.perf_counter()  # seconds cover the round's whole local training, user pass included
        if plan is not None:
            result, _ = train_private(model, self.data, settings, plan, self.cfg,
                                      randomness=SecretRandomness.fresh())
            return RoundOutcome(global_state(model), self._kept(model, global_part, old), result)
        if self.cfg.train.user_epochs:  # FedRecon-style: first fit this node's user rows to the received global part
            train_user_rows(model, self.data, settings, epochs=self.cfg.train.user_epochs,
                            lr=self.cfg.train.user_lr,
                            rng=numpy_rng(self.cfg.seed, "users", self.node_key, server_round))
        anchor = {k: v.detach().clone() for k, v in global_part.items()} if proximal_mu > 0 else None
        result = train_epochs(
            model, self.data, settings, epochs=self.cfg.train.local_epochs,
            rng=numpy_rng(self.cfg.seed, "train", self.node_key, server_round),
            optimizer=make_optimizer(model, settings),
            proximal=(proximal_mu, anchor) if anchor is not None else None,
        )
        result = replace(result, seconds=time.perf_counter() - start)
        return RoundOutcome(global_state(model), self._kept(model, global_part, old), result)

    def release(
        self, kind: str, global_part: dict[str, torch.Tensor], local_part: dict[str, torch.Tensor] | None,
        plan: DPPlan,
    ) -> tuple[dict[str, torch.Tensor], Tensors | None, float]:
        """This node's share of one noisy-sum release; (arrays, new user rows or None, sensitivity).

        ``frequency``: DP item and user counts; ``gradient``: the user rows are fitted locally, then the noisy
        clipped-gradient sum of the global part; ``als``: the user factors are solved exactly, then the noisy
        per-item statistics. All randomness is fresh OS entropy.
        """
        from client.privacy.als import als_release
        from client.privacy.releases import (
            frequency_release,
            frequency_sensitivity,
            gradient_release,
            vote_release,
        )

        randomness = SecretRandomness.fresh()
        offsets = personal.split(local_part)[1]  # a release trains nothing personal: the stored offsets stay
        if kind == "frequency":
            return OrderedDict(counts=frequency_release(self.data, plan, randomness)), None, \
                frequency_sensitivity(plan)
        if kind == floor_vote.VOTE:  # the rows fitted here are the ones the node then evaluates and serves with
            rows = self.fit_users(global_part)
            votes = vote_release(self.model(unit_weight(global_part), rows), self.data, plan, self.cfg, randomness)
            return OrderedDict({floor_vote.VOTE: votes}), rows | offsets, vote_sensitivity(plan.noise, self.cfg)
        model = self.model(global_part, local_part)
        if kind == "als":
            table = next(k for k in global_part if k.startswith("item_emb."))
            stats, users = als_release(self.data, global_part[table].double().numpy(), plan, self.cfg, randomness)
            with torch.no_grad():
                next(iter(model.user_emb.values())).weight.copy_(torch.from_numpy(users))
            return stats, local_state(model) | offsets, plan.release_sensitivity
        if plan.unit == "user" and self.cfg.train.user_epochs:
            train_user_rows(model, self.data, self.settings, epochs=self.cfg.train.user_epochs,
                            lr=self.cfg.train.user_lr,
                            rng=randomness.numpy)
        sums = gradient_release(model, self.data, self.settings, plan, self.cfg, randomness)
        return sums, local_state(model) | offsets, plan.release_sensitivity

    def fit_users(self, global_part: dict[str, torch.Tensor]) -> Tensors:
        """User rows fitted locally and noise-free, to convergence, to a global part they never trained with
        (a floor model), at user weight 1 whatever weight the floor vote gave it (:mod:`shared.floor_vote`)."""
        model = self.model(unit_weight(global_part), None)
        fit_floor_rows(model, self.data, self.settings, numpy_rng(self.cfg.seed, "fit-users", self.node_key))
        return local_state(model)

    def evaluate(
        self, global_part: dict[str, torch.Tensor], local_part: dict[str, torch.Tensor] | None, roles: list[str],
        *, full_rank: bool, server_round: int = 0, floor: bool = False,
    ) -> dict[str, float]:
        """Additive evaluation sums per role, keyed ``<role>-<stat>``.

        With ``eval.user-epochs`` the user rows are first refitted to ``global_part`` (noise-free, global part
        frozen) on this copy of the model only: the node's stored embeddings do not change. DP-ALS solves the
        user factors exactly against the received items, except for the ``floor`` model (its rows are the
        node's fitted ones, :meth:`fit_users`).
        """
        model = self.model(global_part, local_part, personal_view=True)
        if self.cfg.dp.enabled and self.cfg.dp.mechanism == "als" and not floor:  # exact solve, received items
            from client.privacy.als import solve_users

            table = next(k for k in global_part if k.startswith("item_emb."))
            users = solve_users(self.data, global_part[table].double().numpy(), self.cfg)
            with torch.no_grad():
                next(iter(model.user_emb.values())).weight.copy_(torch.from_numpy(users))
        refit_user_rows(model, self.cfg, self.data, rng=numpy_rng(self.cfg.seed, "eval-users", self.node_key,
                                                                  server_round))
        out: dict[str, float] = {}
        for role in roles:
            if role not in (splits.VAL, splits.TEST):
                raise ValueError(f"unknown evaluation role {role!r}")
            if self.cfg.model.task == "explicit":
                r = evaluate_rating(model, self.data, role, self.value_range)
                out |= {f"{role}-count": r.count, f"{role}-sse": r.sse, f"{role}-sae": r.sae}
                continue
            s = evaluate_ranking(model, self.data, role, k=self.cfg.eval.top_k, full_rank=full_rank)
            out |= {
                f"{role}-count": s.count, f"{role}-hr-sum": s.hr, f"{role}-ndcg-sum": s.ndcg,
                f"{role}-full-count": s.full_count, f"{role}-hr-full-sum": s.hr_full,
                f"{role}-ndcg-full-sum": s.ndcg_full, f"{role}-ild-sum": s.ild,
            }  # no novelty: it needs the global item popularity, and a node only knows its own users'
        return out
