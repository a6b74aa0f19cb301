"""GMF, MLP and NeuMF (He et al., WWW 2017) on the :class:`Recommender` base."""

from __future__ import annotations

import torch
from torch import nn

from shared.models.base import Recommender, init_embedding

ACTIVATIONS = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh}


def _tables(n: int, dim: int, names: tuple[str, ...]) -> nn.ModuleDict:
    tables = nn.ModuleDict({name: nn.Embedding(n, dim) for name in names})
    for table in tables.values():
        init_embedding(table)
    return tables


def _mlp(in_dim: int, layers: tuple[int, ...], activation: str) -> nn.Sequential:
    blocks: list[nn.Module] = []
    for width in layers:
        blocks += [nn.Linear(in_dim, width), ACTIVATIONS[activation]()]
        in_dim = width
    return nn.Sequential(*blocks)


class GMF(Recommender):
    """Generalized matrix factorisation: ``h^T (p_u * q_i) + b``."""

    def __init__(self, n_users: int, n_items: int, dim: int) -> None:
        super().__init__()
        self.user_emb = _tables(n_users, dim, ("gmf",))
        self.item_emb = _tables(n_items, dim, ("gmf",))
        self.out = nn.Linear(dim, 1)
        nn.init.constant_(self.out.weight, 1.0)  # start as a plain dot product
        nn.init.zeros_(self.out.bias)

    def score(self, users: dict[str, torch.Tensor], items: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.out(users["gmf"] * items["gmf"]).squeeze(-1)


class MLP(Recommender):
    """The seed DNN: ``x = [p_u, q_i]``, ``h = σ(W1 x + b1) …``, ``y = σ(W_out h + b)``.

    The final σ is applied by the loss (logits out), hidden activations are σ
    by default as in the seed; NCF's MLP tower uses ReLU.
    """

    def __init__(self, n_users: int, n_items: int, dim: int, layers: tuple[int, ...], activation: str = "sigmoid"):
        super().__init__()
        self.user_emb = _tables(n_users, dim, ("mlp",))
        self.item_emb = _tables(n_items, dim, ("mlp",))
        self.tower = _mlp(2 * dim, layers, activation)
        self.out = nn.Linear(layers[-1], 1)

    def score(self, users: dict[str, torch.Tensor], items: dict[str, torch.Tensor]) -> torch.Tensor:
        u = users["mlp"].expand(-1, items["mlp"].shape[1], -1)
        return self.out(self.tower(torch.cat([u, items["mlp"]], dim=-1))).squeeze(-1)


class NeuMF(Recommender):
    """Neural matrix factorisation: a GMF tower and a ReLU MLP tower fused by one linear layer."""

    def __init__(self, n_users: int, n_items: int, dim: int, layers: tuple[int, ...]):
        super().__init__()
        self.user_emb = _tables(n_users, dim, ("gmf", "mlp"))
        self.item_emb = _tables(n_items, dim, ("gmf", "mlp"))
        self.tower = _mlp(2 * dim, layers, "relu")
        self.out = nn.Linear(dim + layers[-1], 1)

    def score(self, users: dict[str, torch.Tensor], items: dict[str, torch.Tensor]) -> torch.Tensor:
        t = items["gmf"].shape[1]
        gmf = users["gmf"] * items["gmf"]
        mlp = self.tower(torch.cat([users["mlp"].expand(-1, t, -1), items["mlp"]], dim=-1))
        return self.out(torch.cat([gmf, mlp], dim=-1)).squeeze(-1)
