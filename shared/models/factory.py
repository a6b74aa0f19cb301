"""Build a model from the run configuration."""

from __future__ import annotations

from shared.config import RunConfig
from shared.models.base import Recommender
from shared.models.towers import GMF, MLP, NeuMF

MODELS = ("neumf", "gmf", "mlp")


def build_model(cfg: RunConfig, n_users: int, n_items: int) -> Recommender:
    """A fresh model for ``n_users`` local users over an ``n_items`` catalog.

    The coordinator builds it with ``n_users=1`` and uses only the global part.
    """
    if cfg.model == "gmf":
        return GMF(n_users, n_items, cfg.embedding_dim)
    if cfg.model == "mlp":
        return MLP(n_users, n_items, cfg.embedding_dim, cfg.hidden_layers)
    if cfg.model == "neumf":
        return NeuMF(n_users, n_items, cfg.embedding_dim, cfg.hidden_layers)
    raise ValueError(f"unknown model {cfg.model!r}")
