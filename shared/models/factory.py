"""Build a model from the run configuration."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from shared.config import RunConfig
from shared.models.base import Recommender
from shared.models.towers import GMF, MLP, NeuMF

MODELS = ("neumf", "gmf", "mlp")


def build_model(cfg: RunConfig, n_users: int, n_items: int) -> Recommender:
    """A fresh model for ``n_users`` local users over an ``n_items`` catalog.

    The coordinator builds it with ``n_users=1`` and uses only the global part.
    ``model.item-bias`` adds a global per-item logit offset (zero-initialised).
    """
    model: Recommender
    if cfg.model.name == "gmf":
        model = GMF(n_users, n_items, cfg.model.embedding_dim)
    elif cfg.model.name == "mlp":
        model = MLP(n_users, n_items, cfg.model.embedding_dim, cfg.model.hidden_layers, cfg.model.mlp_activation)
    elif cfg.model.name == "neumf":
        model = NeuMF(n_users, n_items, cfg.model.embedding_dim, cfg.model.hidden_layers)
    else:
        raise ValueError(f"unknown model {cfg.model.name!r}")
    if cfg.model.item_bias:
        model.item_bias = nn.Embedding(n_items, 1)
        nn.init.zeros_(model.item_bias.weight)
    return model


@torch.no_grad()
def init_items_from_metadata(model: Recommender, features: np.ndarray, *, seed: int, norm: float = 0.5) -> None:
    """Initialise every item table from public item features (e.g. a genre multi-hot matrix).

    Row ``i`` becomes ``norm * unit(features_i @ R)`` with a seeded Gaussian projection ``R``
    (one per table), so items sharing genres start close together. Items without
    features keep their random initialisation. Uses public catalog metadata only.
    """
    gen = torch.Generator().manual_seed(seed)
    feats = torch.as_tensor(features, dtype=torch.float32)
    has = feats.abs().sum(1) > 0
    for table in model.item_emb.values():
        proj = torch.randn(feats.shape[1], table.embedding_dim, generator=gen)
        rows = feats @ proj
        rows = norm * rows / rows.norm(dim=1, keepdim=True).clamp(min=1e-9)
        table.weight[has] = rows[has]


@torch.no_grad()
def neumf_from_pretrained(neumf: NeuMF, gmf: GMF, mlp: MLP, *, alpha: float = 0.5) -> None:
    """NCF's pretraining: NeuMF's towers from a trained GMF and a trained ReLU MLP.

    The fusion layer becomes ``[alpha * h_gmf, (1 - alpha) * h_mlp]`` (He et al. 2017, Sec. 3.4.1), and the
    item biases ``alpha * b_gmf + (1 - alpha) * b_mlp``.
    """
    for part in ("user_emb", "item_emb"):
        getattr(neumf, part)["gmf"].weight.copy_(getattr(gmf, part)["gmf"].weight)
        getattr(neumf, part)["mlp"].weight.copy_(getattr(mlp, part)["mlp"].weight)
    neumf.tower.load_state_dict(mlp.tower.state_dict())
    neumf.out.weight.copy_(torch.cat([alpha * gmf.out.weight, (1 - alpha) * mlp.out.weight], dim=1))
    neumf.out.bias.copy_(alpha * gmf.out.bias + (1 - alpha) * mlp.out.bias)
    if neumf.item_bias is not None:  # the per-item offsets fuse like the logits they are added to
        parts = [(w, m.item_bias.weight) for w, m in ((alpha, gmf), (1 - alpha, mlp)) if m.item_bias is not None]
        fused = sum(w * b for w, b in parts) if parts else torch.zeros_like(neumf.item_bias.weight)
        neumf.item_bias.weight.copy_(fused)
