"""Cold users at the node: federated reconstruction of user embeddings (plain PyTorch).

A user the node has no embedding for, but with a few interactions, gets one row in
every ``user_emb.*`` table fitted locally while the global part (item embeddings
and dense layers) stays frozen: a few full-batch Adam steps on BCE with the
user's positives and uniformly sampled negatives (items outside the positives),
plus a small L2 penalty on the new rows. Nothing leaves the node.

Several users are fitted at once as independent rows: the loss is a sum of
per-user terms and Adam is elementwise, so a user's row depends only on that
user's interactions and the seeded negative stream.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from client.optimizers import Adam
from shared.config import RunConfig
from shared.losses import PerSampleBCE
from shared.models import build_model, local_state, merge_state
from shared.seeding import numpy_rng, torch_generator, torch_seed


@dataclass(frozen=True)
class ColdStartSettings:
    """How a cold user's embedding is fitted."""

    steps: int = 60
    lr: float = 0.05
    num_negatives: int = 4
    l2: float = 0.1  # penalty l2 * ||row||^2 per table (a prior towards 0: 0.03-0.3 beat 1e-3 on MovieLens)
    init_std: float = 0.01

    def __post_init__(self) -> None:
        if self.steps < 1 or self.lr <= 0 or self.num_negatives < 1 or self.l2 < 0 or self.init_std < 0:
            raise ValueError(f"invalid cold-start settings {self}")


DEFAULT_SETTINGS = ColdStartSettings()


def fit_cold_users(
    cfg: RunConfig,
    global_part: Mapping[str, torch.Tensor],
    n_items: int,
    positives: Sequence[np.ndarray],
    *,
    settings: ColdStartSettings = DEFAULT_SETTINGS,
    stream: str = "cold-start",
) -> dict[str, torch.Tensor]:
    """Fit one embedding row per user; returns the local part (``user_emb.*`` -> (B, d)).

    ``positives[b]`` are user b's interacted catalog rows (at least one, all in
    ``0..n_items-1``). Deterministic in (``cfg.seed``, ``stream``, the inputs).
    """
    b = len(positives)
    if b == 0:
        raise ValueError("no users to fit")
    pos = [np.unique(np.asarray(p, dtype=np.int64)) for p in positives]
    if any(len(p) == 0 for p in pos):
        raise ValueError("every cold user needs at least one interaction")
    if any(p[0] < 0 or p[-1] >= n_items for p in pos):
        raise ValueError(f"interactions must be catalog rows in [0, {n_items})")
    with torch_seed(cfg.seed, stream, "shell"):  # the shell's random values are all overwritten below
        model = build_model(cfg, b, n_items)
    init = torch_generator(cfg.seed, stream, "init")  # an own generator: concurrent requests stay deterministic
    for table in model.user_emb.values():
        torch.nn.init.normal_(table.weight, std=settings.init_std, generator=init)
    merge_state(model, global_part=dict(global_part))
    for name, param in model.named_parameters():
        param.requires_grad_(name.startswith("user_emb."))
    model.train()

    width = max(len(p) for p in pos)
    pos_mat = np.zeros((b, width), np.int64)
    pos_mask = np.zeros((b, width), bool)
    for i, p in enumerate(pos):
        pos_mat[i, : len(p)], pos_mask[i, : len(p)] = p, True
    owned = np.zeros((b, n_items), bool)
    owned[np.repeat(np.arange(b), [len(p) for p in pos]), np.concatenate(pos)] = True
    users = torch.arange(b)
    n_neg = width * settings.num_negatives
    targets = torch.cat([torch.ones(b, width), torch.zeros(b, n_neg)], dim=1)
    weight = torch.from_numpy(np.concatenate([pos_mask, np.repeat(pos_mask, settings.num_negatives, axis=1)], 1))
    weight = weight.float()
    criterion = PerSampleBCE(reduction="sum")
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = Adam(params, lr=settings.lr)
    rng = numpy_rng(cfg.seed, stream, "negatives")
    items_pos = torch.from_numpy(pos_mat)
    for _ in range(settings.steps):
        negs = _negatives(owned, n_neg, rng)
        items = torch.cat([items_pos, torch.from_numpy(negs)], dim=1)
        optimizer.zero_grad(set_to_none=True)
        loss = criterion(model(users, items), targets, weight)
        if settings.l2:
            loss = loss + settings.l2 * sum((p**2).sum() for p in params)
        loss.backward()
        optimizer.step()
    return local_state(model)


def _negatives(owned: np.ndarray, n: int, rng: np.random.Generator, tries: int = 8) -> np.ndarray:
    """(B, n) uniform catalog rows; redraws hits on a user's positives up to ``tries`` times."""
    b, n_items = owned.shape
    neg = rng.integers(0, n_items, size=(b, n))
    rows = np.arange(b)[:, None]
    for _ in range(tries):
        hit = owned[rows, neg]
        if not hit.any():
            break
        neg[hit] = rng.integers(0, n_items, size=int(hit.sum()))
    return neg
