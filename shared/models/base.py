"""The common shape of every recommender and the local/global split.

A model scores (user, item) pairs: ``forward(users (B,) or (B,1), items (B,T))``
returns logits ``(B,T)``. Parameters are split by name:

- **local** — every parameter under ``user_emb.`` (user embedding tables). They
  depend on one node's users only, stay on the node and are never sent;
- **global** — everything else (item embeddings, dense layers), which the
  federation aggregates.

The split is exact and complete: ``global_state | local_state == state_dict``
with no key in both (tested for every model).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

LOCAL_PREFIX = "user_emb."


class Recommender(nn.Module):
    """Base class: owns ``user_emb`` (ModuleDict of tables) and ``item_emb``."""

    user_emb: nn.ModuleDict
    item_emb: nn.ModuleDict

    def __init__(self) -> None:
        super().__init__()
        self.item_bias: nn.Embedding | None = None  # optional per-item logit offset (global)

    def user_vectors(self, users: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-table user embeddings, shape (B, 1, d)."""
        users = users.reshape(-1, 1)
        return {name: table(users) for name, table in self.user_emb.items()}

    def item_vectors(self, items: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-table item embeddings, shape (B, T, d)."""
        return {name: table(items) for name, table in self.item_emb.items()}

    def score(self, users: dict[str, torch.Tensor], items: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits (B, T) from embedding vectors (override in subclasses)."""
        raise NotImplementedError

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        logits = self.score(self.user_vectors(users), self.item_vectors(items))
        if self.item_bias is not None:
            logits = logits + self.item_bias(items).squeeze(-1)
        return logits

    @torch.no_grad()
    def item_representation(self) -> torch.Tensor:
        """(n_items, D) item vectors for similarity (diversity re-ranking, ILD)."""
        return torch.cat([t.weight for t in self.item_emb.values()], dim=1)

    @property
    def n_users(self) -> int:
        return next(iter(self.user_emb.values())).num_embeddings

    @property
    def n_items(self) -> int:
        return next(iter(self.item_emb.values())).num_embeddings


def init_embedding(table: nn.Embedding, std: float = 0.01) -> None:
    """NCF's initialisation: N(0, std^2)."""
    nn.init.normal_(table.weight, std=std)


def is_local(name: str) -> bool:
    """True for parameters that never leave the node (user embeddings)."""
    return name.startswith(LOCAL_PREFIX)


def global_state(model: nn.Module) -> OrderedDict[str, torch.Tensor]:
    """Detached copies of every global tensor (what a node sends)."""
    return OrderedDict((k, v.detach().clone()) for k, v in model.state_dict().items() if not is_local(k))


def local_state(model: nn.Module) -> OrderedDict[str, torch.Tensor]:
    """Detached copies of every local tensor (what a node keeps)."""
    return OrderedDict((k, v.detach().clone()) for k, v in model.state_dict().items() if is_local(k))


def merge_state(
    model: nn.Module,
    global_part: dict[str, torch.Tensor] | None = None,
    local_part: dict[str, torch.Tensor] | None = None,
) -> None:
    """Load a global and/or a local part into ``model``; keys and shapes must match exactly."""
    own = model.state_dict()
    for part, want_local in ((global_part, False), (local_part, True)):
        if part is None:
            continue
        expected = {k for k in own if is_local(k) == want_local}
        if set(part) != expected:
            missing, extra = sorted(expected - set(part)), sorted(set(part) - expected)
            raise ValueError(f"state keys differ: missing {missing}, unexpected {extra}")
        for key, value in part.items():
            if tuple(value.shape) != tuple(own[key].shape):
                raise ValueError(f"shape of {key}: got {tuple(value.shape)}, expected {tuple(own[key].shape)}")
        model.load_state_dict(dict(part), strict=False)
