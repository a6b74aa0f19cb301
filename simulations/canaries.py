"""Empirical privacy audit with canaries: a lower bound on a run's epsilon from one training run.

Steinke, Nasr and Jagielski (NeurIPS 2023), "Privacy Auditing with One (1) Training Run":
``m`` canaries are drawn, each is inserted into one node's data with probability 1/2 by a
secret coin, the federation trains once, and the auditor — here in the coordinator's seat,
seeing every update that node releases — scores each canary and guesses which were in.
:func:`shared.one_run_audit.audit_scores` turns the guesses into ε̂, a 95 %-confidence lower
bound on the ε of the mechanism: an honest run's ε̂ must not exceed its claimed ε, and a
mechanism that does not do what its ledger says (:func:`broken`) must be caught.

Canaries are privacy units: a canary *user* (``dp.unit = "user"``) interacts with
``k`` items of its own drawn from the node's least popular half of the catalog; a canary
*interaction* (``"interaction"``) pairs an existing user with one such item. No two
canaries share an item, and the items are rare, so that neither other canaries nor real
users drown a canary's signal. The score of a canary is the summed change of its items' bias over all
rounds of the node's released updates (a linear statistic of the noisy clipped sums when
the optimizer is SGD): the direction in which the canary pushes the model.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from shared.interactions import InteractionData

BIAS = "item_bias.weight"


@dataclass(frozen=True)
class Canaries:
    """Canary definitions and their secret inclusion bits."""

    unit: str
    items: list[np.ndarray]  # per canary: the items it interacts with
    users: np.ndarray | None  # interaction unit: the existing user row of each canary
    included: np.ndarray  # (m,) bool

    @property
    def m(self) -> int:
        return len(self.items)


def draw_canaries(data: InteractionData, unit: str, m: int, *, k: int = 1,
                  secret: np.random.Generator) -> Canaries:
    """``m`` canaries on distinct rare items of ``data`` (``k`` each for canary users); coins p = 1/2 from ``secret``.

    Items are taken from the least popular half of the catalog on this node and never shared between
    canaries, so one canary's signal is not confounded with another's.
    """
    if unit not in ("user", "interaction"):
        raise ValueError(f"canaries exist for the user and interaction units, not {unit!r}")
    per = k if unit == "user" else 1
    rare = np.argsort(data.item_popularity(), kind="stable")[: max(data.n_items // 2, 1)]
    if m * per > len(rare):
        raise ValueError(f"{m} canaries x {per} items need {m * per} distinct rare items; the catalog offers "
                         f"{len(rare)} (use fewer canaries or a larger catalog)")
    chosen = secret.choice(rare, size=m * per, replace=False).reshape(m, per)
    users = secret.integers(0, data.n_users, size=m) if unit == "interaction" else None
    return Canaries(unit, [np.sort(row) for row in chosen], users, secret.random(m) < 0.5)


def with_canaries(data: InteractionData, canaries: Canaries) -> InteractionData:
    """``data`` plus the included canaries (new users, or new training interactions of existing users).

    Canary interactions are implicit positives (value 1); canary users have no held-out items.
    """
    ptr = data.train_indptr
    rows = [data.train_items[ptr[u] : ptr[u + 1]] for u in range(data.n_users)]
    values = [data.train_values[ptr[u] : ptr[u + 1]] for u in range(data.n_users)]
    ids = list(data.user_ids)
    for c in np.flatnonzero(canaries.included):
        if canaries.unit == "user":
            rows.append(canaries.items[c])
            values.append(np.ones(len(canaries.items[c]), np.float32))
            ids.append(f"zz-canary-{c:06d}")  # sorts after every hex pseudonym
        else:
            u = int(canaries.users[c])
            merged, first = np.unique(np.r_[rows[u], canaries.items[c]], return_index=True)
            rows[u], values[u] = merged, np.r_[values[u], np.float32(1)][first]
    new = len(ids) - data.n_users
    no_item, no_value = np.full(new, -1, np.int64), np.zeros(new, np.float32)
    no_negatives = np.full((new, data.val_negatives.shape[1]), -1, np.int64)
    return InteractionData(
        user_ids=np.array(ids, dtype=object), n_items=data.n_items,
        train_indptr=np.r_[0, np.cumsum([len(r) for r in rows])].astype(np.int64),
        train_items=np.concatenate(rows).astype(np.int64), train_values=np.concatenate(values).astype(np.float32),
        val_item=np.r_[data.val_item, no_item], val_value=np.r_[data.val_value, no_value],
        test_item=np.r_[data.test_item, no_item], test_value=np.r_[data.test_value, no_value],
        val_negatives=np.concatenate([data.val_negatives, no_negatives]),
        test_negatives=np.concatenate([data.test_negatives, no_negatives]),
    )


def canary_scores(updates: list[dict[str, np.ndarray]], canaries: Canaries) -> np.ndarray:
    """Membership score per canary: its items' summed item-bias change over every released update."""
    if not updates or BIAS not in updates[0]:
        raise ValueError("canary scores read the item bias: run the audit with item-bias = true")
    total = np.sum([u[BIAS].reshape(-1) for u in updates], axis=0)
    return np.array([float(total[items].sum()) for items in canaries.items])


@contextlib.contextmanager
def broken(how: str | None) -> Iterator[None]:
    """Run a deliberately broken DP-SGD whose ledger still claims the planned mechanism (audit tests only).

    ``"no-noise"``: the noise multiplier is in effect 0; ``"no-clipping"``: per-sample gradients are not
    clipped (the noise stays calibrated to the planned clip norm). ``None`` changes nothing.
    """
    from client.privacy import dpsgd
    from shared.secret_random import SecretRandomness

    if how is None:
        yield
        return
    with contextlib.ExitStack() as stack:
        patch = stack.enter_context(_patch())
        if how == "no-noise":
            patch(SecretRandomness, "gaussian",
                  lambda self, shape, std, dtype=torch.float32: torch.zeros(tuple(shape), dtype=dtype))
        elif how == "no-clipping":
            honest = dpsgd.make_private

            def unclipped(*args, clip_norm, **kwargs):
                parts = honest(*args, clip_norm=1e12, **kwargs)
                parts.optimizer.max_grad_norm = clip_norm  # the noise keeps the planned std
                return parts

            patch(dpsgd, "make_private", unclipped)
        else:
            raise ValueError(f"unknown breakage {how!r} (no-noise, no-clipping)")
        yield


@contextlib.contextmanager
def _patch():
    saved = []

    def patch(owner, name, value):
        saved.append((owner, name, getattr(owner, name)))
        setattr(owner, name, value)

    try:
        yield patch
    finally:
        for owner, name, value in reversed(saved):
            setattr(owner, name, value)
